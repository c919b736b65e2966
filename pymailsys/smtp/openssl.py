"""What smtpd needs of OpenSSL that Python's ssl module does not expose, through ctypes.

NAME
    openssl - a verify callback, a verify result and a session timeout for an SSLContext

SYNOPSIS
    openssl.accept_any_certificate(context)   # Postfix's verify callback; Unsupported
    openssl.verify_result(ssl_object)         # (ok, OpenSSL's reason)
    openssl.set_session_timeout(context, 3600)
    openssl.session_cache_off(context)
    openssl.dh_auto(context)                  # FFDHE parameters chosen by OpenSSL

DESCRIPTION
    The functions are those of the libssl that this process's ``_ssl`` module
    is linked with (found in /proc/self/maps and checked by its version
    string against ``ssl.OPENSSL_VERSION``). The SSL_CTX of an SSLContext and
    the SSL of an SSLObject are read where CPython keeps them (right after the
    object head; the SSL after one more pointer), and every pointer is checked
    before use: the SSL_CTX must report the verify mode Python just set, an
    SSL must belong to an SSL_CTX seen here. A check that fails is
    ``Unsupported`` (the caller refuses the setting that needed it), or for
    ``verify_result`` a result that is not OK.

    ``accept_any_certificate`` asks clients for a certificate (SSL_VERIFY_PEER)
    with a callback that accepts every one, as Postfix's
    tls_verify_certificate_callback does; whether it verified is then
    ``verify_result`` (SSL_get_verify_result). ``set_session_timeout`` is
    SSL_CTX_set_timeout (the life of a session in the process's cache and of
    its tickets); ``session_cache_off`` turns off the server's session cache.
    ``dh_auto`` is SSL_CTX_set_dh_auto: OpenSSL picks the FFDHE group for the
    DHE ciphers (a group matching the certificate's strength), as Postfix does
    when smtpd_tls_dh1024_param_file names no file; without it (or loaded
    parameters) a Python server context has no DHE cipher at all.
"""

from __future__ import annotations

import ctypes
import ssl

_SSL_VERIFY_PEER = 1
_X509_V_OK = 0
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_CTRL_SET_DH_AUTO = 118
_SSL_SESS_CACHE_OFF = 0
_HEAD = object.__basicsize__
_SSL_OFFSET = _HEAD + ctypes.sizeof(ctypes.c_void_p)


class Unsupported(Exception):
    """This Python's ssl module cannot be reached as expected."""


_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(preverify_ok: int, store: int | None) -> int:
    return 1  # as Postfix: judge later, by the verify result


_ACCEPT_ANY = _VerifyCallback(_accept_any)  # kept alive for the process's lifetime
_libssl: ctypes.CDLL | None = None
_contexts: set[int] = set()  # SSL_CTX pointers of contexts seen here


def _lib() -> ctypes.CDLL:
    global _libssl
    if _libssl is not None:
        return _libssl
    path = ""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                name = line.rstrip("\n").rpartition(" ")[2]
                if "/libssl.so" in name:
                    path = name
                    break
    except OSError:
        pass
    if not path:
        raise Unsupported("cannot find the libssl of Python's ssl module")
    lib = ctypes.CDLL(path)
    lib.OpenSSL_version.argtypes = [ctypes.c_int]
    lib.OpenSSL_version.restype = ctypes.c_char_p
    if lib.OpenSSL_version(0).decode("ascii", "replace") != ssl.OPENSSL_VERSION:
        raise Unsupported(f"{path} is not the OpenSSL of Python's ssl module")
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
    lib.SSL_CTX_set_timeout.restype = ctypes.c_long
    lib.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_timeout.restype = ctypes.c_long
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
    lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
    lib.SSL_get_verify_result.argtypes = [ctypes.c_void_p]
    lib.SSL_get_verify_result.restype = ctypes.c_long
    lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
    lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
    _libssl = lib
    return lib


def _pointer(obj: object, offset: int) -> int:
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


def _ssl_ctx(context: ssl.SSLContext) -> tuple[ctypes.CDLL, int]:
    """The context's SSL_CTX, checked: its verify mode must be the one Python reports."""
    lib = _lib()
    ctx = _pointer(context, _HEAD)
    expected = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: _SSL_VERIFY_PEER,
                ssl.CERT_REQUIRED: _SSL_VERIFY_PEER | 2}[context.verify_mode]
    if not ctx or lib.SSL_CTX_get_verify_mode(ctx) != expected:
        raise Unsupported("cannot reach the SSL_CTX of Python's SSLContext")
    _contexts.add(ctx)
    return lib, ctx


def accept_any_certificate(context: ssl.SSLContext) -> None:
    """Ask every client for a certificate and keep any it sends (judged by verify_result)."""
    context.verify_mode = ssl.CERT_OPTIONAL  # first: Python's setter drops a callback
    lib, ctx = _ssl_ctx(context)
    lib.SSL_CTX_set_verify(ctx, _SSL_VERIFY_PEER, _ACCEPT_ANY)


def verify_result(ssl_object: ssl.SSLObject) -> tuple[bool, str]:
    """Whether the peer's certificate verified, else OpenSSL's reason."""
    inner = getattr(ssl_object, "_sslobj", None)
    lib = _libssl
    if inner is None or lib is None:
        return False, "verify result unavailable"
    ssl_ptr = _pointer(inner, _SSL_OFFSET)
    if not ssl_ptr or lib.SSL_get_SSL_CTX(ssl_ptr) not in _contexts:
        return False, "verify result unavailable"
    result = lib.SSL_get_verify_result(ssl_ptr)
    if result == _X509_V_OK:
        return True, ""
    return False, (lib.X509_verify_cert_error_string(result) or b"").decode("ascii", "replace")


def set_session_timeout(context: ssl.SSLContext, seconds: int) -> None:
    lib, ctx = _ssl_ctx(context)
    lib.SSL_CTX_set_timeout(ctx, seconds)


def session_timeout(context: ssl.SSLContext) -> int:
    lib, ctx = _ssl_ctx(context)
    return int(lib.SSL_CTX_get_timeout(ctx))


def session_cache_off(context: ssl.SSLContext) -> None:
    lib, ctx = _ssl_ctx(context)
    lib.SSL_CTX_ctrl(ctx, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_OFF, None)


def dh_auto(context: ssl.SSLContext) -> None:
    lib, ctx = _ssl_ctx(context)
    if lib.SSL_CTX_ctrl(ctx, _SSL_CTRL_SET_DH_AUTO, 1, None) <= 0:
        raise Unsupported("SSL_CTX_set_dh_auto failed")
