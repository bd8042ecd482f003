"""GDAL network file-system calls rasterio does not expose, made on the GDAL library
rasterio itself loaded (so the same configuration, credentials and caches apply): a remote
file's HTTP headers (`VSIGetFileMetadata(path, "HEADERS")`: one HEAD request, no download),
forgetting what GDAL cached about a URL (`VSICurlPartialClearCache`), and closing its
connections before forking readers (`VSICurlClearCache`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

_lib: ctypes.CDLL | None = None
_lock = threading.Lock()


class GdalLibraryNotFound(RuntimeError):
    pass


def _gdal() -> ctypes.CDLL:
    """The libgdal rasterio loaded (its wheels bundle their own copy), else the system's."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        import rasterio._base  # noqa: F401  (loads libgdal into this process)

        path = None
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    if "libgdal" in line and "/" in line:
                        path = line[line.index("/"):].strip()
                        break
        except OSError:
            pass
        path = path or ctypes.util.find_library("gdal")
        if path is None:
            raise GdalLibraryNotFound("cannot find the GDAL library rasterio uses")
        lib = ctypes.CDLL(path)
        lib.VSIGetFileMetadata.restype = ctypes.POINTER(ctypes.c_char_p)
        lib.VSIGetFileMetadata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.CSLDestroy.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.CSLDestroy.restype = None
        lib.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
        lib.VSICurlPartialClearCache.restype = None
        lib.VSICurlClearCache.argtypes = []
        lib.VSICurlClearCache.restype = None
        lib.CPLErrorReset.restype = None
        lib.CPLPushErrorHandler.argtypes = [ctypes.c_void_p]
        lib.CPLPushErrorHandler.restype = None
        lib.CPLPopErrorHandler.argtypes = []
        lib.CPLPopErrorHandler.restype = None
        lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
        _lib = lib
        return lib


def headers(vsi_path: str) -> dict[str, str] | None:
    """The HTTP response headers of a HEAD request on a /vsicurl/, /vsis3/, ... path (names
    lower-cased), or None when GDAL could not get them (missing, forbidden, unreachable)."""
    lib = _gdal()
    lib.CPLErrorReset()
    # GDAL would print "Warning 1: HTTP response code on <URL>: 403" to stderr (URL query
    # string included): the caller says why in its own words.
    lib.CPLPushErrorHandler(ctypes.cast(lib.CPLQuietErrorHandler, ctypes.c_void_p))
    try:
        raw = lib.VSIGetFileMetadata(vsi_path.encode(), b"HEADERS", None)
    finally:
        lib.CPLPopErrorHandler()
    if not raw:
        return None
    out: dict[str, str] = {}
    try:
        i = 0
        while raw[i] is not None:
            key, _, value = raw[i].decode("utf-8", "replace").partition("=")
            out[key.strip().lower()] = value.strip()
            i += 1
    finally:
        lib.CSLDestroy(raw)
    return out


def forget(vsi_path: str) -> None:
    """Drop what GDAL cached about this file (its size, a failed open, downloaded ranges),
    so the next open asks the server again."""
    _gdal().VSICurlPartialClearCache(vsi_path.encode())


def before_fork() -> None:
    """Close GDAL's cached HTTP connections (and forget its caches) before this process
    forks reader processes: a connection inherited by two processes is one socket written
    by both, and a reader then waits for an answer the other one took (a stall until
    GDAL_HTTP_TIMEOUT). Each reader opens its own connections."""
    _gdal().VSICurlClearCache()
