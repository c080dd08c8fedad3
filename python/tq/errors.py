"""The exceptions TQ raises, one hierarchy mirroring the Go sentinels.

Every error a server reports carries a code (wire/spec.md, "Errors"); the
client maps the code to a class below and never looks at the message text.
Each exception carries what the client knows about what was wrong: the
operation (``op``), the partition, and the offending ``keys`` and
``fields`` where the client can tell them (for example the keys a
``kv_batch_get`` found not produced, or the unknown keys the server names,
the first 1024). ``message`` is the server's text, meant for people.

    TQError
    ├── InvalidError          (also a ValueError)   CODE_INVALID
    ├── NotFoundError         (also a KeyError)     CODE_NOT_FOUND
    │   └── StaleError                              a unit no longer holds cells a
    │                                               meta named (overwritten or cleared
    │                                               since): look the keys up again
    ├── DTypeMismatchError    (also a TypeError)    CODE_DTYPE_MISMATCH
    ├── NotReadyError                               CODE_NOT_READY
    ├── CapacityError                               CODE_CAPACITY
    │   └── TooLargeError                           CODE_TOO_LARGE: more than the
    │                                               unit could hold even empty
    ├── ClosedError                                 CODE_CLOSED
    ├── NotSupportedError                           CODE_NOT_SUPPORTED
    ├── LostError                                   CODE_LOST
    ├── CorruptError                                CODE_CORRUPT
    ├── DeadlineError         (also a TimeoutError) CODE_DEADLINE
    ├── CanceledError                               CODE_CANCELED
    ├── UnauthenticatedError  (also PermissionError) CODE_UNAUTHENTICATED
    │   └── ServerUnprovenError                     the server did not prove it knows
    │                                               the client's token (another token,
    │                                               or not the server meant)
    ├── InternalError                               CODE_INTERNAL
    ├── DoneError                                   CODE_DONE
    └── UnavailableError      (also ConnectionError) a peer that cannot be
        │                                           reached or stopped answering
        └── UnitLostError     (also a LostError)    the storage unit holding cells
                                                    that a read needs is unreachable
"""

from __future__ import annotations

__all__ = [
    "TQError", "InvalidError", "NotFoundError", "DTypeMismatchError", "NotReadyError",
    "StaleError", "CapacityError", "TooLargeError", "ClosedError", "NotSupportedError", "LostError", "CorruptError",
    "DeadlineError", "CanceledError", "UnauthenticatedError", "ServerUnprovenError", "InternalError", "DoneError",
    "UnavailableError", "UnitLostError", "from_code",
]


class TQError(Exception):
    """Base of every TQ error.

    Attributes: ``code`` (the wire code, 0 for client-side errors), ``message``
    (the server's or the client's text), ``op`` (the operation, e.g.
    ``"kv_batch_get"``), ``partition``, ``keys`` and ``fields`` (the offending
    names when known, else empty lists), whole; ``str()`` names the first
    16 of each and how many more.
    """

    code = 0

    def __init__(self, message: str = "", *, op: str = "", partition: str = "",
                 keys=None, fields=None, code: int | None = None):
        self.message = message
        self.op = op
        self.partition = partition
        self.keys = list(keys or [])
        self.fields = list(fields or [])
        if code is not None:
            self.code = code
        super().__init__(message)

    def __str__(self) -> str:
        parts = []
        if self.op:
            parts.append(self.op)
        if self.partition:
            parts.append(f"partition {_clip(self.partition)!r}")
        head = " ".join(parts)
        s = f"{head}: {self.message}" if head else self.message
        # The server's message may name the keys itself (an unknown key's
        # lookup names the first 16): not twice.
        if self.keys and not all(isinstance(k, str) and _clip(k) in self.message for k in self.keys[:MAX_MESSAGE_ITEMS]):
            s += f" (keys {message_list(self.keys)})"
        if self.fields:
            s += f" (fields {message_list(self.fields)})"
        return s

    # KeyError's __str__ quotes its argument; keep ours.
    __repr__ = Exception.__repr__


# The most items message_list spells out (as the Go engine.MessageList).
MAX_MESSAGE_ITEMS = 16


def message_list(items, spell=None) -> str:
    """items (a sequence) for an error's message as repr spells a list, but
    only the first 16, and then how many more there are, as the Go
    server's messages name rows and keys ("['a', 'b'] and 3 more"): a
    request may name millions of keys, rows or fields, and its message
    stays short. Each item is spell(item), by default the repr of its
    _clip. The exception's attributes (keys, fields) hold them whole."""
    spell = spell or (lambda x: repr(_clip(x)))
    s = "[" + ", ".join(spell(x) for x in items[:MAX_MESSAGE_ITEMS]) + "]"
    if len(items) > MAX_MESSAGE_ITEMS:
        s += f" and {len(items) - MAX_MESSAGE_ITEMS} more"
    return s


def _clip(name):
    """A name as a message shows it: its first 256 characters, for a name
    may be up to 64 KiB long (MAX_NAME_BYTES)."""
    return name[:256] + "…" if isinstance(name, str) and len(name) > 256 else name


class InvalidError(TQError, ValueError):
    code = 1


class NotFoundError(TQError, KeyError):
    code = 2

    def __str__(self) -> str:  # KeyError would repr() the message
        return TQError.__str__(self)


class StaleError(NotFoundError):
    """A storage unit no longer holds the cells a meta named: they were
    overwritten or cleared between the lookup and the read. A KV get looks
    the keys up again by itself; a get of a meta the caller holds raises it."""


class DTypeMismatchError(TQError, TypeError):
    code = 3


class NotReadyError(TQError):
    code = 4


class CapacityError(TQError):
    code = 5


class TooLargeError(CapacityError):
    """A storage unit refused a write it could not hold even empty (its
    extents, rounded to the unit's blocks, past its capacity): waiting for
    room does not help."""
    code = 15


class ClosedError(TQError):
    code = 6


class NotSupportedError(TQError):
    code = 7


class LostError(TQError):
    code = 8


class CorruptError(TQError):
    code = 9


class DeadlineError(TQError, TimeoutError):
    code = 10


class CanceledError(TQError):
    code = 11


class UnauthenticatedError(TQError, PermissionError):
    code = 12


class ServerUnprovenError(UnauthenticatedError):
    """The server did not prove, in the challenge handshake, that it knows
    the client's token: it holds another token, or it is not the server the
    client meant (a stale address another process now holds, a peer
    impersonating it). The client sent it nothing derived from the token.
    As the Go client's wire.ErrServerUnproven."""


class InternalError(TQError):
    code = 13


class DoneError(TQError):
    """The partition's producer marked it done (``mark_done``) and the task
    has every row: the stream is over."""
    code = 14


class UnavailableError(TQError, ConnectionError):
    """A peer (the controller, a storage unit) cannot be reached or stopped answering."""


class UnitLostError(UnavailableError, LostError):
    """The storage unit holding the cells a read needs cannot be reached (it
    died, or its host is gone), or answered that it is closed (shutting
    down, its memory going with it): the cells are lost unless it comes
    back. Both an UnavailableError and a LostError, as the Go client's error
    wraps both sentinels."""


_BY_CODE = {c.code: c for c in (
    InvalidError, NotFoundError, DTypeMismatchError, NotReadyError, CapacityError, TooLargeError,
    ClosedError, NotSupportedError, LostError, CorruptError, DeadlineError,
    CanceledError, UnauthenticatedError, InternalError, DoneError)}


def from_code(code: int, message: str, **kw) -> TQError:
    """The exception for a wire error code (an unknown code is a plain TQError)."""
    cls = _BY_CODE.get(int(code))
    if cls is None:
        return TQError(message, code=int(code), **kw)
    return cls(message, **kw)
