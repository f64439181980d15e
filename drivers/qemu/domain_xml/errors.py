"""The errors libvirt raises while reading a domain definition, with its codes and texts."""

from __future__ import annotations

from lxml import etree

from protocol.errors import ErrorCode, ErrorDomain, VirError


def xml_error(message: str, domain: ErrorDomain = ErrorDomain.DOMAIN) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


def syntax_error(xml: str, e: etree.XMLSyntaxError, source: str, domain: ErrorDomain) -> VirError:
    """libvirt's rendering of a malformed document: where (``source``, line), the
    parser's message, then the offending line and a caret under the column."""
    entry = e.error_log.last_error if e.error_log else None
    message = (entry.message if entry is not None else str(e)).strip()
    line = entry.line if entry is not None else e.lineno or 0
    column = entry.column if entry is not None else 0
    lines = xml.split("\n")
    context = lines[line - 1] if 0 < line <= len(lines) and lines[line - 1] else "(null)"
    caret = "-" * max(0, column - 1) + "^" if context != "(null)" else "^"
    return VirError(ErrorCode.XML_DETAIL, f"({source}):{line}: {message}\n{context}\n{caret}", domain)


def unsupported(message: str, domain: ErrorDomain = ErrorDomain.DOMAIN) -> VirError:
    return VirError(ErrorCode.CONFIG_UNSUPPORTED, f"unsupported configuration: {message}", domain)


def internal(message: str) -> VirError:
    return VirError(ErrorCode.INTERNAL_ERROR, f"internal error: {message}", ErrorDomain.DOMAIN)


def bad_attr(element: str, attr: str, value: str) -> VirError:
    """An attribute whose value is not one of the enumeration's names."""
    return xml_error(
        f"Invalid value for attribute '{attr}' in element '{element}': '{value}'.", ErrorDomain.XML
    )


def bad_value(xpath: str, value: str) -> VirError:
    """A number that does not parse, named by libvirt's XPath for it."""
    return xml_error(f"Invalid value '{value}' for element or attribute '{xpath}'", ErrorDomain.XML)
