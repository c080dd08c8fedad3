"""Frames, the handshake, and one connection to a TQ server (wire/spec.md).

A :class:`Conn` is one stream socket (TCP or unix) that has done its
``HELLO``. It runs one request at a time (callers on several threads take
turns under its lock), which is all the synchronous client needs; the
protocol allows more in flight, and a client that wants them opens more
connections.

Layout of a frame (32-byte header, little-endian)::

    0  magic "TQ"   2 version 1   3 flags (1 REPLY, 2 ERROR)   4 op u16
    6  reserved u16  8 request id u64  16 body length u32  20 reserved u32
    24 payload length u64
    then the body (a protobuf message), then the payload (raw bytes)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import select
import socket
import stat
import struct
import threading
import time

import numpy as np

from . import _fork
from . import errors
from ._pb import common_pb2, control_pb2, data_pb2, cluster_pb2  # noqa: F401

HEADER = struct.Struct("<2sBBHHQIIQ")
MAGIC = b"TQ"
VERSION = 1
# Optional parts of version 1 a controller lists in its HELLO reply
# (Hello.features; wire/spec.md "Versioning").
FEATURE_CLIENT_HOLDS = "client_holds"
FEATURE_HOLD_GROUP = "hold_group"
FEATURE_FETCH_MUST_EXIST = "fetch_must_exist"
FEATURE_FETCH_PARTITION_GEN = "fetch_partition_gen"
FEATURE_UNCONSUME_ROWS = "unconsume_rows"
FLAG_REPLY = 1
FLAG_ERROR = 2
MAX_BODY = 64 << 20
MAX_PAYLOAD = 1 << 40
# The most body bytes a connection's first HELLO may have (wire.MaxHelloLen):
# servers read it before the peer is authenticated, and end a connection
# that claims more.
MAX_HELLO = 4 << 10

# Ops (wire/spec.md).
HELLO, PING, CANCEL = 1, 2, 3
INSERT, FETCH, FORCE_FETCH, ROWS_META, COMMIT, RESOLVE_KEYS, KEYS_OF, SET_TAGS = range(16, 24)
LIST_KEYS, PRODUCTION_STATUS, CONSUMPTION_STATUS, RESET_CONSUMPTION = range(24, 28)
CLEAR_ROWS, CLEAR_KEYS, CLEAR_PARTITION, PARTITIONS, STATS, FIELDS, UNITS = range(28, 35)
SAVE_CHECKPOINT, LOAD_CHECKPOINT, COMMIT_KEYS, UNCONSUME, CLUSTER_INFO, CHECKPOINTS = range(35, 41)
DELETE_TAGS, COMPARE_AND_SET_TAG, KEY_CHANGES, KV_PUT, KV_GET, MARK_DONE = range(41, 47)
KV_SET, KV_GET_VALUE, ACKNOWLEDGE, STATS_PAGE = 47, 56, 57, 58
MOVED = 55
WRITE, READ, FREE, UNIT_STATS, SHM_SEGMENTS, RESERVE, RESERVE_COMMIT, RESERVE_ABORT, ACQUIRE, RELEASE = range(64, 74)

ENV_TOKEN = "TQ_TOKEN"
# "1": clients refuse a server that does not prove it knows the token (see
# find_require_server_proof).
ENV_REQUIRE_SERVER_PROOF = "TQ_REQUIRE_SERVER_PROOF"
ENV_DATA_DIR = "TQ_DATA_DIR"
ENV_ADDRESS = "TQ_ADDRESS"
DEFAULT_ADDRESS = "tcp://127.0.0.1:7370"

# A connection idle this long is replaced before use: servers close
# connections that send nothing for 5 minutes (wire/spec.md, "Liveness").
IDLE_REDIAL_S = 240.0


ENV_HOST_ID = "TQ_HOST_ID"

# This process's client id, sent in every HELLO (common.proto's client_id):
# the controller gives back the rows a client holds once every connection
# carrying the id was closed from the client's side and none came back
# within its grace (a killed process, on any host). A child forked
# without exec (a DataLoader worker) is a client of its own: a new id.
_client_id = os.urandom(16)


def _new_client_id() -> None:
    global _client_id
    _client_id = os.urandom(16)


os.register_at_fork(after_in_child=_new_client_id)


def host_id() -> str:
    """This host's identity: $TQ_HOST_ID when set (processes that share a
    kernel but stand for separate hosts, as network namespaces in a
    multi-host rehearsal), else the Linux boot id, trimmed ("" elsewhere).
    An override with spaces or control characters, or over 128 bytes, is
    a ValueError, as the Go side refuses it."""
    override = os.environ.get(ENV_HOST_ID, "")
    if override:
        if len(override.encode()) > 128 or any(
            c.isspace() or not c.isprintable() for c in override
        ):
            raise ValueError(
                f"${ENV_HOST_ID}={override!r}: at most 128 bytes of printable "
                "characters without spaces"
            )
        return override
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def data_dir() -> str:
    """This user's TQ data directory: $TQ_DATA_DIR, else $XDG_STATE_HOME/tq
    (when absolute), else ~/.local/state/tq."""
    d = os.environ.get(ENV_DATA_DIR)
    if d:
        return d
    x = os.environ.get("XDG_STATE_HOME", "")
    if x and os.path.isabs(x):
        return os.path.join(x, "tq")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "tq")


def find_require_server_proof(explicit: bool | None = None) -> bool:
    """Whether a client requires the server to prove, in the handshake, that
    it knows the token (Conn's ``require_server_proof``): ``explicit`` when
    given, else $TQ_REQUIRE_SERVER_PROOF ("1"/"true": yes; "0"/"false" or
    unset: no; another value is an InvalidError). Off by default: a token
    found by itself (a leftover token file, an inherited $TQ_TOKEN) would
    otherwise make the client refuse every server run with --insecure."""
    if explicit is not None:
        return bool(explicit)
    v = os.environ.get(ENV_REQUIRE_SERVER_PROOF, "").strip()
    if v == "":
        return False
    if v.lower() in ("1", "t", "true"):
        return True
    if v.lower() in ("0", "f", "false"):
        return False
    raise errors.InvalidError(f"${ENV_REQUIRE_SERVER_PROOF}={v!r}: want 1 or 0")


# White space as Go's strings.TrimSpace trims it (Unicode White_Space),
# so that a token file gives Go clients, tq serve and this client the same
# token: str.strip() would also strip U+001C..U+001F.
_WHITE_SPACE = ("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


# The most bytes a token may have, however it is given (auth.MaxToken):
# servers read a token before the peer is authenticated.
MAX_TOKEN = 4096


def _bad_token_char(c: str) -> bool:
    return c <= " " or c == "\x7f"


def check_token(tok: str, where: str) -> None:
    """Refuse (:class:`InvalidError`) a token given by hand (the token
    argument, $TQ_TOKEN) that is not one word, as ``tq serve`` refuses its
    --token and $TQ_TOKEN and Go clients refuse theirs (auth.CheckToken):
    white space around it (a trailing newline, from a file read whole into
    a variable or a Kubernetes Secret made from one) or inside it, or a
    control character. It is refused rather than trimmed, so that servers
    and clients never disagree on it. The message names ``where`` and the
    token's length, never the token. So is a token longer than
    MAX_TOKEN bytes, as a token file may not be (auth.MaxToken)."""
    try:
        n = len(os.fsencode(tok))  # $TQ_TOKEN's bytes, as Go counts them
    except UnicodeError:
        n = len(tok.encode("utf-8", "surrogatepass"))
    if n > MAX_TOKEN:
        raise errors.InvalidError(
            f"{where}: the token is {n} bytes, longer than the {MAX_TOKEN} a token may have (as a token file)")
    trimmed = tok.strip(_WHITE_SPACE)
    if trimmed != tok and not any(map(_bad_token_char, trimmed)):
        raise errors.InvalidError(
            f"{where}: white space around the token ({n} bytes; a trailing newline, as from a file?): "
            "strip it where the token is set")
    if any(map(_bad_token_char, tok)):
        raise errors.InvalidError(
            f"{where}: white space or a control character inside the token ({n} bytes): "
            "a token is one word, as tq serve's token file holds")


def find_token(explicit: str | None = None) -> str:
    """The token a client presents: ``explicit``, else $TQ_TOKEN, else
    (when $TQ_TOKEN is unset) the token file in :func:`data_dir` (the one
    ``tq serve`` of this user made), else "" (a server run with --insecure
    needs none): only a token file that is not there (or whose path goes
    through something that is not a directory) counts as none. One that
    may be there but cannot be read (its directory closed to this user;
    the file another user's) is an
    :class:`InvalidError` naming the path and why, as Go clients say it.
    A token file that another user owns, or that group or others may
    read, is refused; so is an explicit token or $TQ_TOKEN that
    is not one word (:func:`check_token`), and $TQ_TOKEN set but empty (a
    Kubernetes Secret with an empty value), as ``tq serve`` and Go clients
    refuse it: taken as unset, the token file's token, some other one, was
    used."""
    if explicit:
        check_token(explicit, "the token argument")
        return explicit
    t = os.environ.get(ENV_TOKEN)
    if t:
        check_token(t, f"${ENV_TOKEN}")
        return t
    if t is not None:
        raise errors.InvalidError(
            f"${ENV_TOKEN} is set but empty (a Secret with an empty value?): set it to the cluster's token, "
            "or unset it to use the data directory's token file")
    path = os.path.join(data_dir(), "token")
    try:
        # O_NONBLOCK: a named pipe there would block the open until a
        # writer came; it is refused below instead.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        # ENOTDIR: the path goes through something that is not a
        # directory, so no file can be there (tests point $TQ_DATA_DIR
        # into /dev/null to say so), as Go clients take it.
        return ""
    except OSError as e:
        # EACCES: the file may be there. Taken as none, the client sent no
        # token and the server's refusal pointed nowhere near it.
        why = e.strerror or str(e)
        raise errors.InvalidError(
            f"token file {path} cannot be read: {why[:1].lower()}{why[1:]}: pass the token, set ${ENV_TOKEN}, "
            f"or set ${ENV_DATA_DIR} to a directory of this user's (one without a token file, "
            "for a server run with --insecure)") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.InvalidError(f"token file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise errors.InvalidError(f"token file {path} is owned by uid {st.st_uid}, not by this user")
        if st.st_mode & 0o077:
            raise errors.InvalidError(f"token file {path} has mode {st.st_mode & 0o777:04o}: chmod 600 it")
        b = os.read(fd, MAX_TOKEN + 1)
    finally:
        os.close(fd)
    if len(b) > MAX_TOKEN:
        raise errors.InvalidError(f"token file {path} is larger than {MAX_TOKEN} bytes")
    try:
        tok = b.decode().strip(_WHITE_SPACE)
    except UnicodeDecodeError:
        raise errors.InvalidError(f"token file {path} is not UTF-8 text") from None
    if not tok or any(c <= " " or c == "\x7f" for c in tok):
        raise errors.InvalidError(f"token file {path} does not hold one word")
    return tok


def private_socket(path: str) -> bool:
    """Whether a unix socket a peer named (a controller's local_addrs, a
    unit's unix:// and shm:// addresses, its fd socket) may be dialed
    instead of a TCP address, as Go's auth.CheckPeerSocket: it exists, in a
    directory (not a symbolic link) this user owns and nobody else may write
    to. tq serve puts its sockets in such a directory; elsewhere (its
    /tmp/tq-$UID seen from another mount namespace, made by another user)
    a socket may be someone else's that relays the handshake to the real
    server and then answers the rest itself."""
    if not os.path.exists(path):
        return False
    try:
        st = os.lstat(os.path.dirname(path) or ".")
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def parse_addr(addr: str):
    """``tcp://host:port``, ``unix:///path`` or ``host:port`` → (family,
    sockaddr); InvalidError naming ``addr`` for anything else (another
    scheme, no socket path, a port that is not a number of 0-65535, an
    IPv6 address not in brackets), as wire.ParseAddr and net.Dial refuse
    them."""
    if addr.startswith("unix://"):
        path = addr[len("unix://"):]
        if not path:
            raise errors.InvalidError(f"address {addr!r}: no socket path after unix://")
        return socket.AF_UNIX, path
    rest = addr[len("tcp://"):] if addr.startswith("tcp://") else addr
    if "://" in rest:
        raise errors.InvalidError(f"address {addr!r}: unknown scheme (want tcp://host:port or unix:///path)")
    host, sep, port = rest.rpartition(":")
    # isdigit alone takes other scripts' digits ("\u0663"), and int reads them.
    if not sep or not port.isascii() or not port.isdigit():
        raise errors.InvalidError(f"address {addr!r}: want tcp://host:port or unix:///path")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise errors.InvalidError(f"address {addr!r}: unbalanced brackets around the host")
        host = host[1:-1]
    elif ":" in host:
        # "fe80::1:7370": which colon starts the port is a guess.
        raise errors.InvalidError(f"address {addr!r}: an IPv6 address goes in brackets ([host]:port)")
    if int(port) > 65535:
        raise errors.InvalidError(f"address {addr!r}: port {int(port)} is out of range (0-65535)")
    host = host or "127.0.0.1"
    return socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port))


# The least time a dial gives each of a name's addresses (while that much
# is left), as net.Dialer does, however many addresses share the timeout.
DIAL_MIN_SHARE = 2.0


def _dial_share(deadline, left: int):
    """The connect timeout of the next of ``left`` addresses: the time
    left to ``deadline`` split evenly, at least DIAL_MIN_SHARE, or all that
    is left when less. None (no deadline) is None: blocking."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    return max(remaining / left, min(DIAL_MIN_SHARE, remaining))


def _sockaddr_str(sa) -> str:
    if isinstance(sa, str):
        return sa
    return f"[{sa[0]}]:{sa[1]}" if ":" in sa[0] else f"{sa[0]}:{sa[1]}"


RECV_BUF = 64 << 10  # bytes a connection's reply buffer holds
# How long Conn.close waits, in seconds, for a request in flight on another
# thread to let go of the connection once its socket is shut down.
CLOSE_WAIT = 5.0
# How long a call whose request could not be sent whole (the server closed)
# still waits for the server's answer to it, in seconds.
WRITE_FAIL_GRACE = 2.0


def byte_view(buf) -> memoryview:
    """buf's bytes as a flat memoryview; an empty one for a buffer of no
    bytes, whatever its shape (memoryview refuses to cast a shape with a
    zero in it, such as an array of shape (1, 0, 3))."""
    mv = memoryview(buf)
    return mv.cast("B") if mv.nbytes else memoryview(b"")


def _recv_exact(sock: socket.socket, buf) -> None:
    mv = byte_view(buf)
    got, n = 0, len(mv)
    while got < n:
        k = sock.recv_into(mv[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by the server")
        got += k


class Sending:
    """Passed to :meth:`Conn.call` as ``sending``: ``started`` turns true
    just before the request's first byte goes out. A caller that meets an
    error or an interrupt (KeyboardInterrupt, an exception a signal handler
    raised) tells by it whether the server may have seen the request:
    while false, nothing of it was sent."""

    __slots__ = ("started",)

    def __init__(self):
        self.started = False


class _Ended(Exception):
    """A connection error from the server (an error reply with request id 0):
    it ends the connection over something this side sent, and says what."""

    def __init__(self, error):
        super().__init__(error.message)
        self.error = error


AUTH_NONCE_LEN = 32  # both nonces of the challenge handshake, exactly
GIVE_UP_WAIT = 1.0  # s, for the answer to the proof-less HELLO sent a server whose proof was wrong


def _auth_mac(token: str, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(token.encode(), label + b"".join(parts), hashlib.sha256).digest()


class _Encoded:
    """A message already encoded: call sends exactly these bytes (the
    challenge's client proof covers them)."""

    def __init__(self, body: bytes):
        self._body = body

    def SerializeToString(self) -> bytes:
        return self._body


class Conn:
    """One authenticated connection. Safe for concurrent use (calls take turns).
    It belongs to the process that dialed it: a child forked without exec
    closes its copy of the socket as it starts (see _reinit_in_child) and
    sends nothing on the connection (a call fails as unavailable), lest the
    two interleave requests and read each other's replies.

    ``timeout`` bounds each socket operation; dialing a name, it is one
    deadline for all the name's addresses, tried in the resolver's order,
    each given its share of the time left (at least DIAL_MIN_SHARE)."""

    def __init__(self, addr: str, *, token: str = "", name: str = "tq-python",
                 unit_id: int = 0, incarnation: int = 0, timeout: float = 30.0,
                 require_server_proof: bool = False, on_connect=None):
        # on_connect, when given, is called with the connection once its
        # socket is connected, before the handshake: a pool that must cut
        # its connections off (see unit.Pool.cut) reaches a dial in
        # progress too, whose handshake close() then ends.
        self.addr = addr
        # require_server_proof: refuse (ServerUnprovenError) a server that
        # answers the HELLO without the challenge, proving nothing about the
        # token, and send it nothing more. It needs a token.
        self.require_server_proof = require_server_proof
        if require_server_proof and not token:
            raise errors.InvalidError(
                f"handshake with {addr}: require_server_proof (${ENV_REQUIRE_SERVER_PROOF}) is set but "
                f"the client has no token for the server to prove it knows", op="hello")
        # The server proved, in the challenge, that it knows the token. One
        # that answered the HELLO at once (as a server without a token does,
        # and as any peer can) proved nothing: what else carries the token
        # (a unit's fd socket, whose path the server names) goes only to a
        # server that proved it.
        self.server_proved = False
        self.family, sockaddr = parse_addr(addr)
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._next_id = 1
        self._pending = []  # ids of send_only requests whose replies are unread
        # Set by close: a request in flight on another thread fails
        # (ClosedError) and lets go, and the connection is closed.
        self._closing = False
        self.timeout = timeout
        self._sock_timeout = timeout
        # Replies are read through a buffer: one recv takes a small reply's
        # header and body (and often its payload) at once. A payload's
        # remainder past what is buffered is read straight into its
        # destination.
        self._rbuf = bytearray(RECV_BUF)
        self._rmv = memoryview(self._rbuf)
        self._rlo = self._rhi = 0  # the unread bytes: _rbuf[_rlo:_rhi]
        # Registered before the socket exists, so that a child forked while
        # this dials closes its copy all the same.
        self.sock = None
        _fork.reinit_in_child(self)
        try:
            if self.family == socket.AF_UNIX:
                targets = [(socket.AF_UNIX, sockaddr)]
            else:
                # Each address the host has, IPv6 ones included, in the
                # resolver's order, as net.Dial does: parse_addr's family is
                # only a literal's, and a name may have only IPv6 addresses.
                targets = [(fam, sa) for fam, _, _, _, sa in
                           socket.getaddrinfo(sockaddr[0], sockaddr[1], 0, socket.SOCK_STREAM)]
            # One deadline for them all, split as net.Dialer splits it: a
            # dead address ahead of a live one costs its share of the time
            # left, not the whole timeout.
            deadline = None if timeout is None else time.monotonic() + timeout
            failed = []  # (address, why) of each address that did not connect
            for i, (fam, sa) in enumerate(targets):
                share = _dial_share(deadline, len(targets) - i)
                if share is not None and share <= 0:
                    failed.append((sa, "not tried: the dial timeout was spent"))
                    continue
                self.sock = s = socket.socket(fam, socket.SOCK_STREAM)
                try:
                    s.settimeout(share)
                    s.connect(sa)
                except OSError as e:
                    self.sock = None
                    s.close()
                    failed.append((sa, e))
                    continue
                s.settimeout(timeout)  # the handshake's and the calls' own
                self.family = fam
                break
            else:
                if len(failed) == 1 and isinstance(failed[0][1], OSError):
                    raise failed[0][1]
                raise OSError("; ".join(f"{_sockaddr_str(sa)}: {why}" for sa, why in failed))
        except OSError as e:
            self.close()
            raise errors.UnavailableError(f"dial {addr}: {e}") from None
        if self.family != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_used = time.monotonic()
        try:
            if on_connect is not None:
                on_connect(self)
            self.server = self._hello(token, common_pb2.Hello(
                version=VERSION, role="client", host_id=host_id(), name=name,
                unit_id=unit_id, incarnation=incarnation, client_id=_client_id))
            if unit_id or incarnation:
                self._check_unit(unit_id, incarnation)
        except BaseException:
            self.close()
            raise

    def _hello(self, token: str, hello):
        """The handshake. The token is never sent: with one, the client asks
        for the challenge (wire/spec.md "Handshake"), refuses a server that
        does not prove it knows the token (ServerUnprovenError), and proves it
        knows it in turn. A server without a token answers the HELLO at once."""
        cn = None
        if token:
            cn = hello.auth_nonce = os.urandom(AUTH_NONCE_LEN)
        first = hello.SerializeToString()
        if len(first) > MAX_HELLO:
            # Refused here, naming the cause, as the Go client refuses it:
            # the server would only end the connection.
            raise errors.InvalidError(
                f"connect to {self.addr}: the HELLO is {len(first)} bytes, over the {MAX_HELLO} a server reads "
                f"(wire/spec.md \"Handshake\"): its client name is {len(hello.name.encode())} bytes, its host "
                f"id {len(hello.host_id.encode())} (a shorter name= fits)", op="hello")
        reply = self.call(HELLO, _Encoded(first), common_pb2.Hello, op_name="hello")
        if not (reply.auth_nonce or reply.auth_proof):
            if self.require_server_proof:
                # Nothing more goes to it: the caller closes the connection.
                raise errors.ServerUnprovenError(
                    f"{self.addr} answered without the challenge, proving nothing about the token (as a "
                    f"server run with --insecure does, or any peer), and this client requires the proof "
                    f"(require_server_proof, ${ENV_REQUIRE_SERVER_PROOF})", op="hello")
            return reply
        sn = reply.auth_nonce
        if cn is None:
            raise errors.CorruptError(f"{self.addr} sent a challenge to a HELLO that asked for none", op="hello")
        if len(sn) != AUTH_NONCE_LEN or not hmac.compare_digest(
                reply.auth_proof, _auth_mac(token, b"tq-server", cn, sn)):
            # Say so with a proof-less answer, which a server refuses as it
            # refuses a wrong token (logged, counted), and leave: a peer that
            # could not prove the token gets nothing made from it.
            try:
                self.call(HELLO, common_pb2.Hello(version=VERSION), common_pb2.Hello, op_name="hello",
                          timeout=GIVE_UP_WAIT)
            except errors.TQError:
                pass
            raise errors.ServerUnprovenError(
                f"{self.addr} did not prove it knows this client's token "
                f"(it holds another token, or it is not the server meant)", op="hello")
        proof = _auth_mac(token, b"tq-client", sn, cn, hashlib.sha256(first).digest())
        reply = self.call(HELLO, common_pb2.Hello(version=VERSION, auth_proof=proof), common_pb2.Hello,
                          op_name="hello")
        if reply.auth_nonce or reply.auth_proof:
            raise errors.CorruptError(f"{self.addr} answered the challenge's proof with another challenge",
                                      op="hello")
        self.server_proved = True
        return reply

    def _check_unit(self, unit_id: int, incarnation: int) -> None:
        """Checks the HELLO reply of the unit this connection meant to reach,
        as the Go client's wire.CheckUnit: a server only may refuse a client
        that expects another unit, or another run of it (its cells are not
        there)."""
        r = self.server
        if r.role not in ("", "unit"):
            raise errors.InvalidError(f"{self.addr} answers as a {r.role!r}, not a storage unit", op="hello")
        if unit_id and r.unit_id != unit_id:
            raise errors.LostError(f"{self.addr} serves storage unit {r.unit_id}, not unit {unit_id}", op="hello")
        if incarnation and r.incarnation != incarnation:
            raise errors.LostError(f"storage unit {r.unit_id} at {self.addr} is incarnation {r.incarnation:#x}, "
                                   f"not {incarnation:#x} (it restarted)", op="hello")

    def _reinit_in_child(self) -> None:
        # A storage unit keeps a connection's leases and reservations while
        # its socket is open, in any process: a child that kept its copy
        # of the parent's socket (a DataLoader worker, forked) pinned them
        # after the parent died, until the child exited too. The child
        # cannot use the connection anyway; it dials its own. Closing its
        # copy leaves the parent's open. No lock: the child has no other
        # thread, and one of the parent's may have held it at the fork.
        self._closing = True
        self._drop()

    def close(self) -> None:
        """Close the connection: safe from any thread, and again. A request
        in flight on another thread has its socket shut down under it, which
        wakes it (it fails with ClosedError), and close returns once it let
        go of the connection (or after CLOSE_WAIT, leaving the socket to it
        to close): the socket is never taken from under a request."""
        self._closing = True
        if not self._lock.acquire(blocking=False):
            s = self.sock
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if not self._lock.acquire(timeout=CLOSE_WAIT):
                return  # the request closes it as it lets go
        try:
            self._drop()
        finally:
            self._lock.release()

    def _drop(self) -> None:
        """Close the socket: under the lock (or in a forked child)."""
        s, self.sock = self.sock, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        """Whether the connection is closed, or being closed."""
        return self.sock is None or self._closing

    def peer_closed(self) -> bool:
        """For an idle connection (no request on it): whether the peer closed
        it. A server sends nothing unasked but the error that ends a
        connection, so a socket with anything to read is done either way."""
        s = self.sock
        if s is None or self._closing:
            return True
        p = select.poll()
        try:
            p.register(s, select.POLLIN)
            return bool(p.poll(0))
        except (OSError, ValueError):
            return True

    def _gone(self, op_name: str) -> errors.TQError:
        """The error of a request on a connection closed before or while it ran."""
        if self._closing:
            return errors.ClosedError(f"connection to {self.addr} closed while in use, by this client "
                                      "(Client.close() or tq.close(), or the unit leaving its table)", op=op_name)
        return errors.UnavailableError(f"connection to {self.addr} is closed", op=op_name)

    def _settimeout(self, t: float) -> None:
        # settimeout costs system calls (the socket's blocking mode is set
        # again each time): only when it changes.
        if t != self._sock_timeout:
            self.sock.settimeout(t)
            self._sock_timeout = t

    def _fill(self, n: int) -> None:
        """Reads until at least n (at most RECV_BUF) bytes are buffered."""
        if self._rlo == self._rhi:
            self._rlo = self._rhi = 0
        elif self._rlo + n > RECV_BUF:
            have = self._rhi - self._rlo
            self._rbuf[:have] = self._rmv[self._rlo:self._rhi]
            self._rlo, self._rhi = 0, have
        while self._rhi - self._rlo < n:
            k = self.sock.recv_into(self._rmv[self._rhi:])
            if k == 0:
                raise ConnectionError("connection closed by the server")
            self._rhi += k

    def _read_header(self):
        self._fill(HEADER.size)
        h = HEADER.unpack_from(self._rbuf, self._rlo)
        self._rlo += HEADER.size
        return h

    def _read_into(self, buf) -> None:
        """Fills buf: from the buffer first, the rest from the socket."""
        mv = byte_view(buf)
        take = min(len(mv), self._rhi - self._rlo)
        if take:
            mv[:take] = self._rmv[self._rlo:self._rlo + take]
            self._rlo += take
        if take < len(mv):
            if len(mv) - take < RECV_BUF // 2:
                self._fill(len(mv) - take)
                mv[take:] = self._rmv[self._rlo:self._rlo + len(mv) - take]
                self._rlo += len(mv) - take
            else:
                _recv_exact(self.sock, mv[take:])

    def _read_bytes(self, n: int) -> bytes:
        if n <= RECV_BUF:
            self._fill(n)
            b = bytes(self._rmv[self._rlo:self._rlo + n])
            self._rlo += n
            return b
        # A larger body is allocated as its bytes arrive, not as the header
        # claims it: a server that claims 64 MiB and sends little costs
        # little (n is more than the buffer holds).
        b = bytearray(self._rmv[self._rlo:self._rhi])
        self._rlo = self._rhi = 0
        while len(b) < n:
            chunk = self.sock.recv(min(n - len(b), 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed by the server")
            b += chunk
        return bytes(b)

    def _send(self, op: int, rid: int, body: bytes, payload) -> None:
        bufs = [None, body]
        plen = 0
        if payload:
            for p in payload:
                if type(p) is not bytes:
                    p = byte_view(p)
                if len(p):
                    bufs.append(p)
                    plen += len(p)
        bufs[0] = HEADER.pack(MAGIC, VERSION, 0, op, 0, rid, len(body), 0, plen)
        # sendmsg may send less than all: keep going from where it stopped
        # (bufs[i:] is what is left; every item's len counts bytes).
        i = 0
        while i < len(bufs):
            n = self.sock.sendmsg(bufs[i:i + 512])  # at most IOV_MAX (1024) buffers a call
            while n:
                b = bufs[i]
                if n >= len(b):
                    n -= len(b)
                    i += 1
                else:
                    bufs[i] = memoryview(b)[n:]
                    n = 0
            while i < len(bufs) and len(bufs[i]) == 0:
                i += 1

    def call(self, op: int, req, reply_cls=None, *, payload=None, into=None, max_payload=None,
             op_name: str = "", timeout: float | None = None, err_ctx=None, need="", sending=None):
        """Send one request and wait for its reply.

        ``need``: a feature (or a tuple of them) the server's HELLO reply
        must list (FEATURE_*, wire/spec.md "Versioning") for the request to
        be sent; without it :class:`NotSupportedError` is raised and nothing
        is sent: an older server would ignore the field the feature covers.

        ``payload``: a list of bytes-like objects sent back to back after the
        body. ``into``: a writable buffer, or a list of them filled one after
        another, the reply's payload is read into (exactly the payload's
        size in all); without it a payload is returned as a new buffer, of at
        most ``max_payload`` bytes when given (a larger answer is corrupt, and
        nothing is allocated for it). Returns the decoded reply (or
        ``(reply, payload)`` when the reply carries a payload or ``into`` was
        given).

        ``sending``: a :class:`Sending`, marked started just before the
        request goes out (a call that fails while it is not was not sent).
        """
        err_ctx = err_ctx or {}
        for need in (need,) if isinstance(need, str) else need:
            if not need or need in self.server.features:
                continue
            raise errors.NotSupportedError(
                f"{op_name or 'request'} needs the feature {need!r}, which the server at {self.addr} does not "
                f"list in its HELLO (an older tq serve: upgrade it)", op=op_name, **err_ctx)
        body = req.SerializeToString() if req is not None else b""
        ended = send_err = None
        if self.pid != os.getpid():
            # Before the lock: in a child, a thread of the parent may have
            # held it at the fork.
            raise errors.UnavailableError(f"connection to {self.addr} belongs to process {self.pid}",
                                          op=op_name)
        with self._lock:
            if self.sock is None or self._closing:
                self._drop()
                raise self._gone(op_name)
            rid = self._next_id
            self._next_id += 1
            try:
                self._settimeout(timeout if timeout is not None else self.timeout)
                self._drain()
                if sending is not None:
                    sending.started = True
                try:
                    self._send(op, rid, body, payload)
                except (BrokenPipeError, ConnectionResetError) as e:
                    # The server may have answered from the request's
                    # header and closed without reading the rest (a
                    # refusal): its answer is in the socket. Read it, for
                    # a while; the connection is done either way.
                    send_err = e
                    try:
                        self.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    self._settimeout(min(WRITE_FAIL_GRACE, self._sock_timeout or WRITE_FAIL_GRACE))
                try:
                    magic, ver, flags, rop, _, rrid, blen, _, plen = self._read_header()
                except (OSError, ConnectionError):
                    if send_err is not None:
                        try:
                            raise send_err from None
                        finally:
                            send_err = None  # raised, it holds this frame: no cycle (client._wait_to_repeat)
                    raise
                self._check_header(magic, ver, flags, rrid, rid, blen, plen, MAX_PAYLOAD)
                rbody = self._read_bytes(blen)
                rpay = None
                if rrid == 0:
                    raise _Ended(common_pb2.Error.FromString(rbody))
                if rop != op:
                    # Requests and their replies carry the same op: this
                    # answers something else.
                    raise errors.CorruptError(f"an op {rop} reply to a {op_name or op} request from {self.addr}",
                                              op=op_name, **err_ctx)
                if into is not None and not flags & FLAG_ERROR:
                    # The answer fills the buffers exactly, or it is wrong:
                    # none at all would leave them as they were.
                    parts = into if isinstance(into, list) else [into]
                    have = sum(len(byte_view(b)) for b in parts)
                    if have != plen:
                        raise errors.CorruptError(f"reply payload of {plen} bytes for buffers of {have}",
                                                  op=op_name, **err_ctx)
                    for b in parts:
                        self._read_into(b)
                    rpay = into
                elif plen:
                    if max_payload is not None and plen > max_payload:
                        raise errors.CorruptError(f"a {op_name or op} answer of {plen} bytes from {self.addr}, "
                                                  f"{max_payload} asked at most", op=op_name, **err_ctx)
                    rpay = np.empty(plen, dtype=np.uint8) if plen > 65536 else bytearray(plen)
                    self._read_into(rpay)
            except _Ended as e:
                self._drop()
                ended = e.error
            except (OSError, ConnectionError) as e:
                self._drop()
                if self._closing:
                    raise self._gone(op_name) from None
                if isinstance(e, socket.timeout):
                    raise errors.DeadlineError(f"no reply from {self.addr} in time", op=op_name, **err_ctx) from None
                raise errors.UnavailableError(f"{self.addr}: {e}", op=op_name, **err_ctx) from None
            except BaseException:
                # A corrupt reply, or an interrupt (KeyboardInterrupt) half
                # way through a frame: the stream is out of step for good.
                # The server cancels what this connection had running.
                self._drop()
                raise
            finally:
                self.last_used = time.monotonic()
            if send_err is not None or self._closing:
                self._drop()  # answered, but the request was cut short, or closed since
        if ended is not None:
            raise errors.from_code(ended.code, f"the server ended the connection: {ended.message}",
                                   op=op_name, **err_ctx)
        if flags & FLAG_ERROR:
            err = common_pb2.Error.FromString(rbody)
            if err.code == 0:
                raise errors.CorruptError(f"a {op_name or op} error reply without a code (message {err.message!r})",
                                          op=op_name, **err_ctx)
            if err.keys:  # the keys the server names (the unknown keys of a lookup)
                err_ctx = dict(err_ctx, keys=list(err.keys))
            raise errors.from_code(err.code, err.message, op=op_name, **err_ctx)
        reply = reply_cls.FromString(rbody) if reply_cls is not None else None
        if rpay is not None or into is not None:
            return reply, rpay
        return reply

    def send_only(self, op: int, req) -> None:
        """Send a request whose reply nobody waits for (RELEASE): its reply
        is read, and dropped, before the next call's request goes out.
        Errors are dropped with it; a broken connection shows at the next
        call."""
        body = req.SerializeToString() if req is not None else b""
        if self.pid != os.getpid():
            return  # before the lock, as in call
        with self._lock:
            if self.sock is None or self._closing:
                self._drop()
                return
            rid = self._next_id
            self._next_id += 1
            try:
                self._settimeout(self.timeout)
                self._drain()
                self._send(op, rid, body, None)
            except (OSError, errors.CorruptError, _Ended):
                self._drop()
                return
            except BaseException:
                # An interrupt half way through a frame, or after it with
                # its reply not counted: the stream is out of step (as in
                # call).
                self._drop()
                raise
            self._pending.append(rid)
            if self._closing:
                self._drop()

    def _check_header(self, magic, ver, flags, rrid, rid, blen, plen, max_payload) -> None:
        """Raises CorruptError for a reply header that is not the answer to
        request ``rid``, nor a connection error (request id 0: an error
        reply the server sends before it ends the connection)."""
        if magic == MAGIC and ver != VERSION:
            raise errors.CorruptError(f"{self.addr} speaks wire protocol version {ver}, this client {VERSION}")
        conn_err = rrid == 0 and flags & FLAG_ERROR and not plen
        if magic != MAGIC or not flags & FLAG_REPLY or (rrid != rid and not conn_err) \
                or blen > MAX_BODY or plen > max_payload:
            raise errors.CorruptError(f"bad reply header from {self.addr}")
        if flags & FLAG_ERROR and plen:
            # Before anything is allocated for it: an error reply's payload
            # is empty (wire/spec.md, Frames).
            raise errors.CorruptError(f"an error reply with {plen} payload bytes from {self.addr}")

    def _drain(self) -> None:
        """Read the replies of send_only requests (under the lock)."""
        while self._pending:
            rid = self._pending.pop(0)
            magic, ver, flags, _, _, rrid, blen, _, plen = self._read_header()
            self._check_header(magic, ver, flags, rrid, rid, blen, plen, 1 << 20)
            body = self._read_bytes(blen)
            if rrid == 0:
                raise _Ended(common_pb2.Error.FromString(body))
            self._read_into(bytearray(plen))
