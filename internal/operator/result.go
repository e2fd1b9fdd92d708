package operator

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	wasmev1 "wasme.io/wasme/api/v1"
)

// Steps of a pass say how they ended through a typed error, in the manner of Flux's
// internal/reconcile: the deferred summary derives the conditions, the requeue and
// observedGeneration from it alone, so there is one failure channel.
//
//   - stallingError: nothing changes until the spec does (Stalled=True, no backoff, the
//     generation counts as handled);
//   - waitingError: the pass waits for something a watch or a timer brings (a node cache, Istio,
//     a workload); Reconciling=True, no backoff;
//   - any other error: a failure that is retried with backoff (Reconciling=True); wrap it with
//     failed to give it a reason.
type stallingError struct {
	reason string
	err    error
}

func (e *stallingError) Error() string { return e.err.Error() }
func (e *stallingError) Unwrap() error { return e.err }

type waitingError struct {
	reason string
	err    error
	// after, when set, asks for another pass then; otherwise a watch brings it.
	after time.Duration
}

func (e *waitingError) Error() string { return e.err.Error() }
func (e *waitingError) Unwrap() error { return e.err }

type genericError struct {
	reason string
	err    error
}

func (e *genericError) Error() string { return e.err.Error() }
func (e *genericError) Unwrap() error { return e.err }

func stalling(reason string, err error) error { return &stallingError{reason, err} }

func waiting(reason string, after time.Duration, err error) error {
	return &waitingError{reason, err, after}
}

func failed(reason string, err error) error { return &genericError{reason, err} }

// stepResult is what a step that went through asks of the rest of the pass.
type stepResult struct {
	// requeueAfter, when set, asks for another pass then (a tag to resolve again).
	requeueAfter time.Duration
}

// merge keeps the soonest requeue.
func (a stepResult) merge(b stepResult) stepResult {
	if a.requeueAfter == 0 || (b.requeueAfter > 0 && b.requeueAfter < a.requeueAfter) {
		return b
	}
	return a
}

// outcome is how a pass ended, as the status and the work queue see it.
type outcome struct {
	// reason is empty when the pass went through.
	reason, message string
	stalled         bool
	// handled: the generation was dealt with (success or stalled), so observedGeneration moves.
	handled bool
	// requeueAfter and retErr go back to controller-runtime.
	requeueAfter time.Duration
	retErr       error
}

// outcomeOf reads a pass's error (nil: it went through).
func outcomeOf(res stepResult, err error) outcome {
	var st *stallingError
	var wt *waitingError
	var gen *genericError
	switch {
	case err == nil:
		return outcome{handled: true, requeueAfter: res.requeueAfter}
	case errors.As(err, &st):
		return outcome{reason: st.reason, message: err.Error(), stalled: true, handled: true, requeueAfter: res.requeueAfter}
	case errors.As(err, &wt):
		return outcome{reason: wt.reason, message: err.Error(), requeueAfter: res.merge(stepResult{wt.after}).requeueAfter}
	case errors.As(err, &gen):
		return outcome{reason: gen.reason, message: err.Error(), retErr: err}
	default:
		return outcome{reason: wasmev1.ProgressingReason, message: err.Error(), retErr: err}
	}
}

// maxListed bounds how many items a status message names: a condition message is capped at
// 32,768 bytes by the API server, and hundreds of failing workloads must still give a status it
// accepts.
const (
	maxListed       = 20
	maxMessageBytes = 4096
)

// listSome joins items for a status message, naming at most maxListed of them and at most
// maxMessageBytes in all, and says how many it left out ("… and 212 more").
func listSome(items []string) string {
	var b strings.Builder
	n := 0
	for _, it := range items {
		if n == maxListed || b.Len()+len(it)+2 > maxMessageBytes {
			break
		}
		if n > 0 {
			b.WriteString("; ")
		}
		b.WriteString(it)
		n++
	}
	if rest := len(items) - n; rest > 0 {
		fmt.Fprintf(&b, " … and %d more", rest)
	}
	return b.String()
}

// truncate cuts s to at most max bytes on a rune boundary, marking the cut.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	const mark = " …"
	cut := max - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
