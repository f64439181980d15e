"""The errors libvirt raises while reading a domain definition, with its codes and texts."""

from __future__ import annotations

from protocol.errors import ErrorCode, ErrorDomain, VirError


def xml_error(message: str, domain: ErrorDomain = ErrorDomain.DOMAIN) -> VirError:
    return VirError(ErrorCode.XML_ERROR, f"XML error: {message}", domain)


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
