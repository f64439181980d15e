"""Key codes of libvirt's code sets turned into QEMU's "qnum" numbers for send-key.

qnum is the PC scan code set 1 in one byte: a plain key is its make code
(A is 0x1e), an extended key (sent after 0xe0 on the wire) is 0x80 plus its
make code (Right Ctrl is 0x9d). The set 1 family differs only in how it
writes extended keys: ``atset1`` as 0xe01d, ``xt_kbd`` (Linux's xt driver) as
0x11d, ``xt`` not at all. USB HID usages and Windows virtual keys go through
the Linux code of the same key. Key names (``KEY_A``) never reach the daemon:
virsh turns them into numbers of the chosen set before calling.
"""

from __future__ import annotations

# virKeycodeSet, in libvirt's order.
CODESETS = ("linux", "xt", "atset1", "atset2", "atset3", "os_x", "xt_kbd", "usb", "win32",
            "qnum")
LINUX, XT, ATSET1, XT_KBD, USB, WIN32, QNUM = 0, 1, 2, 6, 7, 8, 9

# Linux input codes 1-83 (Esc to keypad '.') are their own scan code; the rest:
_LINUX_QNUM = {code: code for code in range(1, 84)} | {
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
_SCAN_CODES = frozenset(_LINUX_QNUM.values())

# Linux codes of the letters, in keyboard rows.
_LETTERS = {ch: code for row, first in (("qwertyuiop", 16), ("asdfghjkl", 30), ("zxcvbnm", 44))
            for code, ch in enumerate(row, first)}
_DIGITS = {str(n): 2 + (n - 1) % 10 for n in range(10)}  # KEY_1 is 2, KEY_0 is 11
_KEYPAD = (82, 79, 80, 81, 75, 76, 77, 71, 72, 73)  # KEY_KP0 .. KEY_KP9
_F_KEYS = (59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 87, 88)  # KEY_F1 .. KEY_F12

# USB HID keyboard usages (page 7) to Linux codes.
_USB_LINUX = (
    {0x04 + i: _LETTERS[ch] for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz")}
    | {0x1E + i: _DIGITS[ch] for i, ch in enumerate("1234567890")}
    | {0x3A + i: code for i, code in enumerate(_F_KEYS)}
    | {0x59 + i: _KEYPAD[(i + 1) % 10] for i in range(10)}
    | {
        0x28: 28, 0x29: 1, 0x2A: 14, 0x2B: 15, 0x2C: 57, 0x2D: 12, 0x2E: 13, 0x2F: 26,
        0x30: 27, 0x31: 43, 0x32: 43, 0x33: 39, 0x34: 40, 0x35: 41, 0x36: 51, 0x37: 52,
        0x38: 53, 0x39: 58, 0x46: 99, 0x47: 70, 0x48: 119, 0x49: 110, 0x4A: 102,
        0x4B: 104, 0x4C: 111, 0x4D: 107, 0x4E: 109, 0x4F: 106, 0x50: 105, 0x51: 108,
        0x52: 103, 0x53: 69, 0x54: 98, 0x55: 55, 0x56: 74, 0x57: 78, 0x58: 96, 0x63: 83,
        0x64: 86, 0x65: 127, 0x67: 117, 0xE0: 29, 0xE1: 42, 0xE2: 56, 0xE3: 125,
        0xE4: 97, 0xE5: 54, 0xE6: 100, 0xE7: 126,
    }
)

# Windows virtual-key codes to Linux codes (the generic VK_CONTROL and VK_MENU
# are the left keys; VK_SHIFT, VK_LCONTROL and VK_LMENU have no entry).
_WIN32_LINUX = (
    {ord(ch.upper()): code for ch, code in _LETTERS.items()}
    | {ord(ch): code for ch, code in _DIGITS.items()}
    | {0x70 + i: code for i, code in enumerate(_F_KEYS)}
    | {0x60 + i: code for i, code in enumerate(_KEYPAD)}
    | {
        0x08: 14, 0x09: 15, 0x0D: 28, 0x11: 29, 0x12: 56, 0x13: 119, 0x14: 58, 0x1B: 1,
        0x20: 57, 0x21: 104, 0x22: 109, 0x23: 107, 0x24: 102, 0x25: 105, 0x26: 103,
        0x27: 106, 0x28: 108, 0x2D: 110, 0x2E: 111, 0x5B: 125, 0x5C: 126, 0x5D: 127,
        0x6A: 55, 0x6B: 78, 0x6D: 74, 0x6E: 83, 0x6F: 98, 0x90: 69, 0x91: 70, 0xA0: 42,
        0xA1: 54, 0xA3: 97, 0xA5: 100, 0xBA: 39, 0xBB: 13, 0xBC: 51, 0xBD: 12, 0xBE: 52,
        0xBF: 53, 0xC0: 41, 0xDB: 26, 0xDC: 43, 0xDD: 27, 0xDE: 40, 0xE2: 86,
    }
)


def _set1(code: int, extended_prefix: int) -> int | None:
    """A set 1 code whose extended keys are written ``prefix << 8 | make code``."""
    if code < 0x80:
        return code if code in _SCAN_CODES else None
    if code >> 8 == extended_prefix:
        qnum = 0x80 | code & 0xFF
        return qnum if code & 0xFF < 0x80 and qnum in _SCAN_CODES else None
    return None


def to_qnum(codeset: int, code: int) -> int | None:
    """The qnum of ``code`` in ``codeset``, or None when it has none."""
    if codeset == QNUM:
        return code
    if codeset == LINUX:
        return _LINUX_QNUM.get(code)
    if codeset == XT:
        return code if code < 0x80 and code in _SCAN_CODES else None
    if codeset == ATSET1:
        return _set1(code, 0xE0)
    if codeset == XT_KBD:
        return _set1(code, 0x01)
    if codeset == USB:
        return _LINUX_QNUM.get(_USB_LINUX.get(code, 0))
    if codeset == WIN32:
        return _LINUX_QNUM.get(_WIN32_LINUX.get(code, 0))
    return None
