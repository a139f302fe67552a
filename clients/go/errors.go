package imprint

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ErrClosed is returned by the Subscribe functions once Close has been called.
var ErrClosed = errors.New("imprint: the client is closed")

// ErrAlreadySubscribed is returned when a client subscribes to a topic twice (share the
// *Subscription instead).
var ErrAlreadySubscribed = errors.New("imprint: topic already subscribed by this client")

// ConfigError is an unusable Options value (a bad URL, a bad label, an empty instance...).
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return "imprint: invalid client configuration: " + e.Msg }

// InvalidTopicError is a topic name the server would refuse (1-128 characters of a-z, 0-9,
// '.', '_', '-', starting with a letter or digit).
type InvalidTopicError struct{ Topic string }

func (e *InvalidTopicError) Error() string {
	return fmt.Sprintf("imprint: invalid topic name %q: topic names are 1-128 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", e.Topic)
}

// APIError is an error answer of the server: its status and its {"error": {code, message}}.
type APIError struct {
	Status  int
	Code    string
	Message string
	// RetryAfter is the answer's Retry-After header (0 when there was none).
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	return fmt.Sprintf("imprint: %s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

// Transient reports whether the refusal is worth retrying soon: 5xx, 429 and 408.
func (e *APIError) Transient() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// NetworkError is a request that got no (complete) HTTP answer: refused, reset, timed out.
type NetworkError struct {
	Op  string
	Err error
}

func (e *NetworkError) Error() string { return fmt.Sprintf("imprint: %s: %v", e.Op, e.Err) }
func (e *NetworkError) Unwrap() error { return e.Err }

// VerifyError is a payload whose size or SHA-256 is not what the server announced.
type VerifyError struct{ Msg string }

func (e *VerifyError) Error() string { return "imprint: " + e.Msg }

// rejected is a version that will not do (it does not verify, decode, or exist): it is
// reported failed and not tried again until the server offers another.
type rejected struct{ msg string }

func (e *rejected) Error() string { return e.msg }

func reject(format string, a ...any) error { return &rejected{msg: fmt.Sprintf(format, a...)} }

// isTransient: worth retrying after a backoff (the network, timeouts, 5xx, 429, 408, I/O).
func isTransient(err error) bool {
	var api *APIError
	if errors.As(err, &api) {
		return api.Transient()
	}
	var rej *rejected
	if errors.As(err, &rej) {
		return false
	}
	var cfg *ConfigError
	return !errors.As(err, &cfg)
}

// apiError reads an unsuccessful answer: the API's envelope when the body is one, the
// status and the start of the body otherwise.
func apiError(status int, header http.Header, body []byte) *APIError {
	e := &APIError{Status: status, RetryAfter: parseRetryAfter(header.Get("Retry-After"))}
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &env) == nil && env.Error != nil {
		e.Code, e.Message = env.Error.Code, env.Error.Message
		return e
	}
	e.Code = "http_error"
	reason := http.StatusText(status)
	if reason == "" {
		reason = "error"
	}
	text := strings.TrimSpace(truncate(strings.ToValidUTF8(string(body), "\uFFFD"), 300))
	if text == "" {
		e.Message = reason
	} else {
		e.Message = reason + ": " + text
	}
	return e
}

// parseRetryAfter reads delta-seconds (Imprint never sends an HTTP date); 0 when absent.
func parseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
		return time.Duration(n * float64(time.Second))
	}
	return 0
}

// truncate cuts s to at most n bytes on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
