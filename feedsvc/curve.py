"""CurveZMQ on tcp endpoints: key files, the ZAP allow-list, and securing one socket.

Keys are zmq.auth certificate files (``NAME.key`` holds the public key, ``NAME.key_secret``
both), written by ``feedsvc keygen``. The server authenticates clients through ZAP (pyzmq's
own authenticator, see feedsvc.server.access) against a directory of public keys
(``curve.authorized_keys``).

Security options are taken by libzmq at bind/connect time, per endpoint: the service binds its
ipc endpoints plain (they are guarded by file permissions) and its tcp endpoints with Curve, on
the same socket.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.base import Authenticator

log = logging.getLogger("feedsvc.curve")

SECRET_FILE_MODE = 0o600


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def _read_certificate(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a zmq.auth certificate; ValueError says what is wrong."""
    try:
        return zmq.auth.load_certificate(path)
    except OSError:
        raise ValueError(f"cannot read the certificate {os.fspath(path)!r}") from None
    except ValueError:
        raise ValueError(f"{os.fspath(path)!r} is not a zmq certificate (no public-key)") from None


def load_key_pair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) from a NAME.key_secret file; ValueError says what is wrong with it."""
    public, secret = _read_certificate(path)
    if secret is None:
        raise ValueError(
            f"{os.fspath(path)!r} holds no secret key (give the NAME.key_secret file, not NAME.key)"
        )
    return public, secret


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key of a NAME.key (or NAME.key_secret) file; ValueError says what is wrong."""
    return _read_certificate(path)[0]


def authorized_key_count(directory: str | os.PathLike[str]) -> int:
    """How many public keys the allow-list directory holds; ValueError if it is unreadable."""
    try:
        return len(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as error:
        problem = f"cannot load public keys from {os.fspath(directory)!r}: {error}"
        raise ValueError(problem) from None


def key_files_problem(server_secret_file: str, authorized_keys_dir: str) -> tuple[str, str] | None:
    """(config key, what is wrong) for the first unusable Curve key file, or None: so that a
    service never starts with Curve half set up."""
    for key, check in (
        ("curve.server_secret", lambda: load_key_pair(server_secret_file)),
        ("curve.authorized_keys", lambda: authorized_key_count(authorized_keys_dir)),
    ):
        try:
            check()
        except ValueError as error:
            return key, str(error)
    return None


def create_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (owner-only) into `directory`; never overwrites."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"NAME must be a plain file name, got {name!r}")
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    for existing in (public_file, secret_file):
        if existing.exists():
            raise ValueError(f"{existing} exists; keys are never overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    # The secret file is created under a umask that leaves it owner-only from the first byte.
    previous_umask = os.umask(0o077)
    try:
        written_public, written_secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(previous_umask)
    Path(written_public).chmod(0o644)
    Path(written_secret).chmod(SECRET_FILE_MODE)
    return Path(written_public), Path(written_secret)


def warn_if_readable_by_others(path: str | os.PathLike[str], what: str) -> None:
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s %s is readable by other users (mode %o); chmod 600 it",
            what,
            os.fspath(path),
            stat.S_IMODE(mode),
        )


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs for a Curve server: the server's public key and its own key pair."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_files(
        cls, server_key_file: str | os.PathLike[str], client_cert_file: str | os.PathLike[str]
    ) -> CurveClientKeys:
        """From the server's NAME.key and the client's NAME.key_secret; ValueError if unusable."""
        server_public = load_public_key(server_key_file)
        client_public, client_secret = load_key_pair(client_cert_file)
        return cls(server_public, client_public, client_secret)


def connect(socket: zmq.Socket, endpoint: str, keys: CurveClientKeys | None) -> None:
    """Connect `socket` to `endpoint`, with Curve for a tcp endpoint when keys are given and
    plain otherwise (ipc is guarded by file permissions, and the service binds it plain)."""
    if keys is not None and is_tcp(endpoint):
        socket.curve_serverkey = keys.server_public
        socket.curve_publickey = keys.client_public
        socket.curve_secretkey = keys.client_secret
    else:
        # Back to the NULL mechanism for this connection if an earlier one used Curve.
        socket.curve_server = False
    socket.connect(endpoint)


class CurveServer:
    """The service's side: the Curve allow-list in the ZAP handler and the options of its tcp
    endpoints.

    Parameters
    ----------
    authenticator:
        The service's ZAP handler (a started pyzmq Authenticator); this configures its Curve
        allow-list for `domains`.
    server_secret_file:
        The server's NAME.key_secret.
    authorized_keys_dir:
        Directory of clients' public keys (NAME.key); reloaded by `reload()`.
    domains:
        The ZAP domains of the sockets that use Curve.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        server_secret_file: str,
        authorized_keys_dir: str,
        domains: tuple[str, ...],
    ) -> None:
        self.public_key, self._secret_key = load_key_pair(server_secret_file)
        warn_if_readable_by_others(server_secret_file, "the server's secret key")
        self.authorized_keys_dir = authorized_keys_dir
        self._authenticator = authenticator
        self._domains = domains
        self.reload()

    def reload(self) -> int:
        """Re-read the authorized keys (new connections see the change); returns their count."""
        count = authorized_key_count(self.authorized_keys_dir)
        for domain in self._domains:
            self._authenticator.configure_curve(domain=domain, location=self.authorized_keys_dir)
        if count == 0:
            log.warning(
                "curve.authorized_keys %s holds no public keys: no client can connect over tcp",
                self.authorized_keys_dir,
            )
        return count

    def secure(self, socket: zmq.Socket, endpoint: str) -> None:
        """Set Curve for a tcp endpoint, plain for ipc, before `socket` binds `endpoint` (see the
        module's docstring)."""
        if is_tcp(endpoint):
            socket.curve_secretkey = self._secret_key
            socket.curve_publickey = self.public_key
            socket.curve_server = True
        else:
            socket.curve_server = False
