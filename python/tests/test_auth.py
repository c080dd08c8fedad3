"""The challenge handshake (wire/spec.md "Handshake"): the token never goes
on the wire, and a server that cannot prove it knows the token is refused."""

import hashlib
import hmac
import os
import socket
import threading

import pytest

import tq
from tq import errors, wire
from tq._pb import common_pb2

TOKEN = "tok-3f9a1c7e-SECRET-d41d8cd98f00b204"


def _recv_exact(c, n):
    b = b""
    while len(b) < n:
        chunk = c.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b


def _read_frame(c):
    hdr = _recv_exact(c, 32)
    magic, ver, flags, op, _, rid, blen, _, plen = wire.HEADER.unpack(hdr)
    return hdr, op, rid, _recv_exact(c, blen)


def _reply(c, op, rid, msg, flags=wire.FLAG_REPLY):
    body = msg.SerializeToString()
    c.sendall(wire.HEADER.pack(wire.MAGIC, 1, flags, op, 0, rid, len(body), 0, 0) + body)


def _mac(token, label, *parts):
    return hmac.new(token.encode(), label + b"".join(parts), hashlib.sha256).digest()


class _Recorder:
    """A plain TCP listener whose handler plays the server's part; every
    byte the client sends on its one connection is recorded, until the
    client closes."""

    def __init__(self, handler):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.addr = f"tcp://127.0.0.1:{self.ls.getsockname()[1]}"
        self.got = b""
        self.frames = []
        self._handler = handler
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        c, _ = self.ls.accept()
        c.settimeout(10)
        rec = self

        class Tee:
            def recv(self, n):
                b = c.recv(n)
                rec.got += b
                return b

            def sendall(self, b):
                c.sendall(b)

            def close(self):
                c.close()
        try:
            self._handler(Tee())
            while True:  # until the client closes
                b = c.recv(65536)
                if not b:
                    break
                self.got += b
        except (OSError, EOFError):
            pass
        finally:
            c.close()
            self.ls.close()

    def wait(self):
        self._t.join(15)
        assert not self._t.is_alive()
        return self.got


def _plain(c):
    _, op, rid, _ = _read_frame(c)
    _reply(c, op, rid, common_pb2.Hello(version=1, role="controller"))


def _forged(c):
    _, op, rid, _ = _read_frame(c)
    _reply(c, op, rid, common_pb2.Hello(version=1, auth_nonce=b"\x07" * 32, auth_proof=b"\x09" * 32))


def _refuses(c):
    _, op, rid, _ = _read_frame(c)
    _reply(c, op, rid, common_pb2.Error(code=12, message="wrong or missing token"),
           flags=wire.FLAG_REPLY | wire.FLAG_ERROR)


def _closes(c):
    _read_frame(c)
    c.close()


@pytest.mark.parametrize("handler", [_plain, _forged, _refuses, _closes],
                         ids=["tokenless", "forged-challenge", "refuses", "closes"])
def test_hello_never_sends_token(handler):
    """Whatever a client with a token dials learns nothing of the token."""
    r = _Recorder(handler)
    try:
        wire.Conn(r.addr, token=TOKEN).close()
    except tq.TQError:
        pass
    got = r.wait()
    assert TOKEN.encode() not in got
    hdr = got[:32]
    blen = wire.HEADER.unpack(hdr)[6]
    hello = common_pb2.Hello.FromString(got[32:32 + blen])
    assert hello.token == "" and len(hello.auth_nonce) == 32


def test_server_that_cannot_prove_the_token_is_refused():
    """A forged challenge is refused, naming the address, and the client
    sends no proof of its own: only a proof-less HELLO saying it gives up."""
    r = _Recorder(_forged)
    with pytest.raises(errors.ServerUnprovenError) as e:
        wire.Conn(r.addr, token=TOKEN)
    assert isinstance(e.value, tq.UnauthenticatedError) and e.value.code == 12
    assert r.addr in str(e.value)
    got = r.wait()
    n1 = 32 + wire.HEADER.unpack(got[:32])[6]
    hdr = wire.HEADER.unpack(got[n1:n1 + 32])
    assert hdr[3] == wire.HELLO
    give_up = common_pb2.Hello.FromString(got[n1 + 32:n1 + 32 + hdr[6]])
    assert give_up.auth_proof == b"" and give_up.token == ""
    assert len(got) == n1 + 32 + hdr[6], "the client sent more than its HELLOs"


def test_challenge_as_the_spec_writes_it():
    """The client's proof is what wire/spec.md says, computed here on its
    own; the server's answer to it is the handshake's."""
    seen = {}

    def h(c):
        _, op, rid, first = _read_frame(c)
        cn = common_pb2.Hello.FromString(first).auth_nonce
        sn = b"\x5a" * 32
        _reply(c, op, rid, common_pb2.Hello(version=1, auth_nonce=sn, auth_proof=_mac(TOKEN, b"tq-server", cn, sn)))
        _, op, rid, second = _read_frame(c)
        p = common_pb2.Hello.FromString(second)
        seen["ok"] = hmac.compare_digest(
            p.auth_proof, _mac(TOKEN, b"tq-client", sn, cn, hashlib.sha256(first).digest()))
        _reply(c, op, rid, common_pb2.Hello(version=1, role="controller", cluster_id="cid"))
    r = _Recorder(h)
    conn = wire.Conn(r.addr, token=TOKEN)
    assert conn.server.role == "controller" and conn.server.cluster_id == "cid"
    conn.close()
    assert TOKEN.encode() not in r.wait()
    assert seen["ok"]


def test_tq_server_challenge(server):
    """Against tq serve: the right token connects, a wrong one is refused
    as unauthenticated (CODE_UNAUTHENTICATED)."""
    conn = wire.Conn(server.address, token=server.token)
    assert conn.server.role == "controller"
    conn.close()
    with pytest.raises(tq.UnauthenticatedError) as e:
        wire.Conn(server.address, token="wrong")
    assert e.value.code == 12
    with server.client() as c:
        assert c is not None


def test_fd_socket_gets_no_token_from_an_unproven_unit(tmp_path):
    """The unit's fd socket carries the token in clear, at the path the
    unit's SHM_SEGMENTS reply names. A peer at the unit's address that
    answers the HELLO without the challenge (as a unit without a token
    does, which any peer can) proved nothing: the client must not send the
    token to the fd socket it names."""
    import types

    from tq._pb import data_pb2
    from tq.unit import Unit

    unit_path, fd_path = str(tmp_path / "fake.sock"), str(tmp_path / "fake.shm")
    fd_got = []
    fls = socket.socket(socket.AF_UNIX)
    fls.bind(fd_path)
    fls.listen(4)
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(unit_path)
    ls.listen(4)

    def fd_socket():
        c, _ = fls.accept()
        c.settimeout(1)
        b = b""
        try:
            while True:
                chunk = c.recv(4096)
                if not chunk:
                    break
                b += chunk
        except OSError:
            pass
        fd_got.append(b)
        c.close()

    def unit():
        c, _ = ls.accept()
        c.settimeout(10)
        try:
            _, op, rid, body = _read_frame(c)
            h = common_pb2.Hello.FromString(body)
            _reply(c, op, rid, common_pb2.Hello(version=1, role="unit", host_id=h.host_id,
                                                unit_id=h.unit_id, incarnation=h.incarnation))
            while True:
                _, op, rid, _ = _read_frame(c)
                if op == wire.SHM_SEGMENTS:
                    _reply(c, op, rid, data_pb2.ShmSegmentsReply(fd_socket=fd_path))
        except (OSError, EOFError):
            pass
        finally:
            c.close()

    ts = [threading.Thread(target=f, daemon=True) for f in (fd_socket, unit)]
    for t in ts:
        t.start()
    info = types.SimpleNamespace(unit_id=3, incarnation=9, host_id="h", alive=True, draining=False, capacity=0,
                                 addrs=["unix://" + unit_path, "shm://" + fd_path])
    u = Unit(info, token=TOKEN, name="n", host="h", transport="shm", timeout=5)
    try:
        with pytest.raises(tq.TQError):
            u.segment(1)
    finally:
        u.close()
        ls.close()
        fls.close()
    for t in ts:
        t.join(5)
    assert fd_got, "the client never used the fd socket the fake named (the test proves nothing)"
    assert TOKEN.encode() not in fd_got[0], "the token went to the fd socket of a unit that did not prove it"


def _only_hello(got):
    """got is exactly one frame, a HELLO asking for the challenge."""
    hdr = wire.HEADER.unpack(got[:32])
    assert hdr[3] == wire.HELLO
    hello = common_pb2.Hello.FromString(got[32:32 + hdr[6]])
    assert hello.token == "" and len(hello.auth_nonce) == 32
    assert len(got) == 32 + hdr[6], "the client sent more than its HELLO"


def _unused_addr():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    return addr


def test_require_server_proof_refuses_a_server_without_the_challenge():
    """With require_server_proof, a peer that answers the HELLO at once (as a
    server run with --insecure does, and as any peer can) is refused, naming
    its address and the setting, and is sent nothing after the HELLO."""
    r = _Recorder(_plain)
    with pytest.raises(errors.ServerUnprovenError) as e:
        wire.Conn(r.addr, token=TOKEN, require_server_proof=True)
    assert isinstance(e.value, tq.UnauthenticatedError)
    assert r.addr in str(e.value)
    assert "require_server_proof" in str(e.value) and "TQ_REQUIRE_SERVER_PROOF" in str(e.value)
    _only_hello(r.wait())


def test_without_require_server_proof_a_server_without_the_challenge_passes(monkeypatch):
    """The default is unchanged: such a server is accepted, unproven."""
    monkeypatch.delenv("TQ_REQUIRE_SERVER_PROOF", raising=False)
    r = _Recorder(_plain)
    conn = wire.Conn(r.addr, token=TOKEN)
    assert conn.server.role == "controller" and not conn.server_proved
    conn.close()
    r.wait()


@pytest.mark.parametrize("how", ["env", "keyword"])
def test_client_require_server_proof(monkeypatch, how):
    """$TQ_REQUIRE_SERVER_PROOF=1, or Client(require_server_proof=True),
    makes the client refuse a controller that proves nothing."""
    kw = {}
    if how == "env":
        monkeypatch.setenv("TQ_REQUIRE_SERVER_PROOF", "1")
    else:
        monkeypatch.delenv("TQ_REQUIRE_SERVER_PROOF", raising=False)
        kw["require_server_proof"] = True
    r = _Recorder(_plain)
    with pytest.raises(errors.ServerUnprovenError) as e:
        tq.Client(r.addr, token=TOKEN, retry_for=0, **kw)
    assert r.addr in str(e.value) and "TQ_REQUIRE_SERVER_PROOF" in str(e.value)
    _only_hello(r.wait())


def test_require_server_proof_without_a_token_is_a_configuration_error(monkeypatch, tmp_path):
    """Nothing to prove: refused before anything is dialed (InvalidError,
    not UnavailableError at an address where nothing listens)."""
    addr = _unused_addr()
    with pytest.raises(errors.InvalidError) as e:
        wire.Conn(addr, token="", require_server_proof=True)
    assert not isinstance(e.value, errors.UnavailableError)
    assert "require_server_proof" in str(e.value) and addr in str(e.value)
    monkeypatch.setenv("TQ_REQUIRE_SERVER_PROOF", "1")
    monkeypatch.delenv("TQ_TOKEN", raising=False)
    monkeypatch.setenv("TQ_DATA_DIR", str(tmp_path))
    with pytest.raises(errors.InvalidError) as e:
        tq.Client(addr)
    assert "TQ_REQUIRE_SERVER_PROOF" in str(e.value)
    monkeypatch.setenv("TQ_REQUIRE_SERVER_PROOF", "maybe")
    with pytest.raises(errors.InvalidError):
        tq.Client(addr, token=TOKEN)


@pytest.mark.parametrize("transport", ["tcp", "shm"])
def test_require_server_proof_against_tq_serve(server, monkeypatch, transport):
    """tq serve with the token proves it: the controller and its units pass
    with the setting on."""
    conn = wire.Conn(server.address, token=server.token, require_server_proof=True)
    assert conn.server_proved
    conn.close()
    monkeypatch.setenv("TQ_REQUIRE_SERVER_PROOF", "1")
    with server.client(transport=transport) as c:
        assert c.require_server_proof
        p = "p-proof-" + transport
        # Writes go to a unit: its connection is made with the setting.
        c.kv_put("k", p, {"x": __import__("numpy").arange(3, dtype="int64")})


def test_peer_socket_only_in_private_dir(tmp_path):
    """A unit's unix socket on this host is dialed (with shared memory, and
    its fd socket sent the token) only in a directory of this user's that
    nobody else may write to; elsewhere the unit is reached over TCP. Before,
    any socket that existed at the path the controller named was dialed: in
    /tmp/tq-$UID seen from another mount namespace (a container, a service
    with its own /tmp), another user may have made the directory and put a
    socket there that relays the handshake to the real unit over TCP, then
    names its own fd socket and is sent the token in clear."""
    from tq._pb import cluster_pb2
    from tq.unit import Unit

    def unit_at(d):
        d.mkdir()
        socks = []
        for name in ("u.sock", "u.sock.shm"):
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(d / name))
            s.listen()
            socks.append(s)
        info = cluster_pb2.UnitInfo(unit_id=1, host_id="h", alive=True, addrs=[
            "tcp://127.0.0.1:1", f"unix://{d / 'u.sock'}", f"shm://{d / 'u.sock.shm'}"])
        return info, socks

    info, socks = unit_at(tmp_path / "open")
    os.chmod(tmp_path / "open", 0o1777)
    try:
        assert not wire.private_socket(str(tmp_path / "open" / "u.sock"))
        u = Unit(info, token=TOKEN, name="t", host="h", transport="auto", timeout=1)
        assert (u.transport, u.addr) == ("tcp", "tcp://127.0.0.1:1")
    finally:
        for s in socks:
            s.close()

    _, socks = unit_at(tmp_path / "private")
    os.chmod(tmp_path / "private", 0o700)
    try:
        assert wire.private_socket(str(tmp_path / "private" / "u.sock"))
        assert not wire.private_socket(str(tmp_path / "private" / "gone.sock"))
    finally:
        for s in socks:
            s.close()


def _nonce_only(c):
    _, op, rid, _ = _read_frame(c)
    _reply(c, op, rid, common_pb2.Hello(version=1, auth_nonce=b"\x07" * 32))


def _challenge_twice(c):
    _, op, rid, body = _read_frame(c)
    cn, sn = common_pb2.Hello.FromString(body).auth_nonce, b"\x07" * 32
    challenge = common_pb2.Hello(version=1, auth_nonce=sn, auth_proof=_mac(TOKEN, b"tq-server", cn, sn))
    _reply(c, op, rid, challenge)
    _, op, rid, _ = _read_frame(c)
    _reply(c, op, rid, challenge)


@pytest.mark.parametrize("handler,token,cls", [
    (_nonce_only, TOKEN, errors.ServerUnprovenError),
    (_forged, "", errors.CorruptError),
    (_challenge_twice, TOKEN, errors.CorruptError),
], ids=["nonce-without-proof", "challenge-unasked", "challenge-answering-the-proof"])
def test_challenge_replies(handler, token, cls):
    """A HELLO reply with auth_nonce or auth_proof is a challenge
    (wire/spec.md): without its proof the server proved nothing; one to a
    client that asked for none, or one answering the client's proof, is
    corrupt. As the Go client."""
    r = _Recorder(handler)
    with pytest.raises(cls):
        wire.Conn(r.addr, token=token)
    r.wait()
