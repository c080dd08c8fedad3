package wire

import (
	"context"
	"errors"
	"fmt"

	"github.com/tqgo/tq/engine"
	"github.com/tqgo/tq/wire/wirepb"
)

// ErrUnauthenticated reports a connection that did not complete the
// handshake or gave the wrong token.
var ErrUnauthenticated = errors.New("wire: unauthenticated")

// ErrServerUnproven reports a server that did not prove, in the challenge
// handshake, that it knows the client's token: it holds another token, or
// it is not the server the client meant (a stale address another process
// now holds, a peer impersonating it). The client sent it nothing derived
// from the token. It wraps [ErrUnauthenticated] (CODE_UNAUTHENTICATED).
var ErrServerUnproven = fmt.Errorf("wire: server did not prove it knows the token: %w", ErrUnauthenticated)

// ErrUnavailable reports a peer that is unreachable or stopped answering;
// it wraps [engine.ErrUnavailable].
var ErrUnavailable = fmt.Errorf("wire: %w", engine.ErrUnavailable)

var codeErrs = []struct {
	code wirepb.Code
	err  error
}{
	{wirepb.Code_CODE_INVALID, engine.ErrInvalid},
	{wirepb.Code_CODE_NOT_FOUND, engine.ErrNotFound},
	{wirepb.Code_CODE_DTYPE_MISMATCH, engine.ErrDTypeMismatch},
	{wirepb.Code_CODE_NOT_READY, engine.ErrNotReady},
	// Before CODE_CAPACITY: ErrTooLarge wraps ErrCapacity.
	{wirepb.Code_CODE_TOO_LARGE, engine.ErrTooLarge},
	{wirepb.Code_CODE_CAPACITY, engine.ErrCapacity},
	{wirepb.Code_CODE_CLOSED, engine.ErrClosed},
	{wirepb.Code_CODE_NOT_SUPPORTED, engine.ErrNotSupported},
	{wirepb.Code_CODE_LOST, engine.ErrLost},
	{wirepb.Code_CODE_CORRUPT, engine.ErrCorrupt},
	{wirepb.Code_CODE_DEADLINE, context.DeadlineExceeded},
	{wirepb.Code_CODE_CANCELED, context.Canceled},
	{wirepb.Code_CODE_UNAUTHENTICATED, ErrUnauthenticated},
	{wirepb.Code_CODE_DONE, engine.ErrDone},
}

// CodeOf classifies err for an error reply.
func CodeOf(err error) wirepb.Code {
	for _, ce := range codeErrs {
		if errors.Is(err, ce.err) {
			return ce.code
		}
	}
	return wirepb.Code_CODE_INTERNAL
}

// RemoteError is an error reply from a peer. It unwraps to the engine
// sentinel for its code, so errors.Is(err, engine.ErrNotFound) works across
// the wire.
type RemoteError struct {
	Code    wirepb.Code
	Message string
}

func (e *RemoteError) Error() string {
	if e.Message == "" {
		return "error reply with no message, code " + e.Code.String()
	}
	return e.Message
}

// Unwrap returns the sentinel the code stands for.
func (e *RemoteError) Unwrap() error {
	for _, ce := range codeErrs {
		if ce.code == e.Code {
			return ce.err
		}
	}
	return nil
}

// ErrorReply builds the body of an error reply; the keys an
// [engine.KeysError] in err names go along (the first
// [engine.MaxErrorKeys]).
func ErrorReply(err error) *wirepb.Error {
	e := &wirepb.Error{Code: CodeOf(err), Message: err.Error()}
	if ke, ok := errors.AsType[*engine.KeysError](err); ok {
		e.Keys = ke.Keys[:min(len(ke.Keys), engine.MaxErrorKeys)]
	}
	return e
}

// FromReply turns an error reply body into a Go error: a
// [*RemoteError], inside an [engine.KeysError] where the reply names
// keys.
func FromReply(e *wirepb.Error) error {
	if e == nil {
		return fmt.Errorf("error reply without a body: %w", engine.ErrCorrupt)
	}
	re := &RemoteError{Code: e.Code, Message: e.Message}
	if len(e.Keys) > 0 {
		return &engine.KeysError{Keys: e.Keys, Err: re}
	}
	return re
}
