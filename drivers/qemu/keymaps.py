"""Key codes of libvirt's code sets turned into QEMU's "qnum" numbers for send-key.

qnum is the PC scan code set 1 in one byte: a plain key is its make code
(A is 0x1e), an extended key (sent after 0xe0 on the wire) is 0x80 plus its
make code (Right Ctrl is 0x9d). Key names (``KEY_A``) never reach the daemon:
virsh turns them into numbers of the chosen set before calling.
"""

from __future__ import annotations

# virKeycodeSet, in libvirt's order.
CODESETS = ("linux", "xt", "atset1", "atset2", "atset3", "os_x", "xt_kbd", "usb", "win32",
            "qnum")
LINUX, XT, ATSET1, QNUM = 0, 1, 2, 9

# Linux input codes whose scan code is not the code itself (codes 1-83, Esc
# to keypad '.', are the same number in both).
_LINUX_EXTRA = {
    85: 0x76,   # KEY_ZENKAKUHANKAKU
    86: 0x56,   # KEY_102ND
    87: 0x57,   # KEY_F11
    88: 0x58,   # KEY_F12
    89: 0x73,   # KEY_RO
    90: 0x78,   # KEY_KATAKANA
    91: 0x77,   # KEY_HIRAGANA
    92: 0x79,   # KEY_HENKAN
    93: 0x70,   # KEY_KATAKANAHIRAGANA
    94: 0x7B,   # KEY_MUHENKAN
    95: 0x5C,   # KEY_KPJPCOMMA
    96: 0x9C,   # KEY_KPENTER
    97: 0x9D,   # KEY_RIGHTCTRL
    98: 0xB5,   # KEY_KPSLASH
    99: 0x54,   # KEY_SYSRQ
    100: 0xB8,  # KEY_RIGHTALT
    102: 0xC7,  # KEY_HOME
    103: 0xC8,  # KEY_UP
    104: 0xC9,  # KEY_PAGEUP
    105: 0xCB,  # KEY_LEFT
    106: 0xCD,  # KEY_RIGHT
    107: 0xCF,  # KEY_END
    108: 0xD0,  # KEY_DOWN
    109: 0xD1,  # KEY_PAGEDOWN
    110: 0xD2,  # KEY_INSERT
    111: 0xD3,  # KEY_DELETE
    113: 0xA0,  # KEY_MUTE
    114: 0xAE,  # KEY_VOLUMEDOWN
    115: 0xB0,  # KEY_VOLUMEUP
    116: 0xDE,  # KEY_POWER
    117: 0x59,  # KEY_KPEQUAL
    119: 0xC6,  # KEY_PAUSE
    121: 0x7E,  # KEY_KPCOMMA
    124: 0x7D,  # KEY_YEN
    125: 0xDB,  # KEY_LEFTMETA
    126: 0xDC,  # KEY_RIGHTMETA
    127: 0xDD,  # KEY_COMPOSE
    142: 0xDF,  # KEY_SLEEP
    143: 0xE3,  # KEY_WAKEUP
}

# The 83 keys of the original XT keyboard: scan codes 1 to 0x53.
_BASIC = range(0x01, 0x54)


def to_qnum(codeset: int, code: int) -> int | None:
    """The qnum of ``code`` in ``codeset``, or None when it has none."""
    if codeset == QNUM:
        return code
    if codeset == LINUX:
        return code if code in _BASIC else _LINUX_EXTRA.get(code)
    if codeset == XT:
        return code if code in _BASIC else None
    if codeset == ATSET1:  # extended keys written with their prefix: 0xe01d
        if code < 0x80:
            return code if code else None
        if code >> 8 == 0xE0 and 0 < code & 0xFF < 0x80:
            return 0x80 | code & 0xFF
        return None
    return None
