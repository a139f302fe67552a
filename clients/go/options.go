package imprint

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"time"
)

// Options configure a Client. Only URL is required. A zero duration or count means the
// default; where zero itself is meaningful (InitialWait, LongPoll, StartupFallback) a
// negative value asks for it.
type Options struct {
	// URL of the Imprint server, e.g. "http://imprint:3000".
	URL string
	// FallbackURLs: more servers of the same deployment, tried in order (wrapping around)
	// after a poll fails with a network error, a timeout or a 5xx. The client stays on
	// the one that answers. The token goes to these servers only.
	FallbackURLs []string
	// Token: a bearer token (a consumer token in production), sent on every request to
	// the configured servers (never to another host a payload link may name).
	Token string
	// Instance: this node's stable name in the consumer audit (default: the host name).
	Instance string
	// Labels decide which version this node resolves to (region, app, cluster...): at
	// most 32 pairs, 4 KiB in all, with the server's rules for keys and values.
	Labels map[string]string
	// CacheDir keeps the last good payload of each topic (and the files of SubscribeFile)
	// and serves it at start-up when the server is unreachable. Without it, files go to a
	// private temporary directory removed by Close.
	CacheDir string
	// SnapshotStore is the server's payload store, read when the server is unreachable
	// and a subscription has nothing cached: "file:///dir", or an "https://host/prefix"
	// (or "http://") base under which objects are fetched by key, its query string (a
	// gateway's credential, say) kept on every object URL. See SnapshotURL for
	// presigned URLs.
	SnapshotStore string
	// SnapshotURL, with an https:// SnapshotStore, turns an object key
	// ("snapshots/<topic>.json", or the key a manifest names) into the URL to GET, e.g. a
	// presigned S3 URL. Without it, keys are appended to SnapshotStore's path.
	SnapshotURL func(ctx context.Context, key string) (string, error)
	// SnapshotKeyring: the path of a copy of the server's keyring file (IMPRINT_KEYRING),
	// read by New, to open the sealed snapshot manifests (and sealed objects) of topics
	// encrypted at rest (docs/encryption.md, "Snapshots"). It needs SnapshotStore. It holds
	// key material: give a node a keyring with only the keys it needs. Without it, a sealed
	// manifest is logged ("sealed at rest under key ...") and not used.
	SnapshotKeyring string

	// InitialWait: how long a Subscribe call waits for the server's first answer before
	// returning with the cached or default value (default 5 s; negative: not at all). A
	// refused connection is an answer: an unreachable server costs no wait.
	InitialWait time.Duration
	// LongPoll: how long the server may hold a poll (default 30 s, at most 60 s;
	// negative: short polls only).
	LongPoll time.Duration
	// RequestTimeout bounds each request beyond the long-poll hold, and the silence
	// between two chunks of a download (default 30 s).
	RequestTimeout time.Duration
	// MinBackoff and MaxBackoff: retry delays after network errors, 5xx, 429 and 408,
	// doubling from min to max, each drawn from [d/2, d] (default 0.5 s to 30 s).
	MinBackoff, MaxBackoff time.Duration
	// ClientErrorRetry: the delay after any other 4xx (a refused token, a bad label);
	// default twice MaxBackoff (60 s).
	ClientErrorRetry time.Duration
	// StartupFallback: when the newest version fails to apply at start-up, try this many
	// older versions released to these labels, newest first (default 3; negative: off).
	StartupFallback int
	// RecheckRejected: while the server offers only a version that failed here, ask it
	// about newer ones this often with a short poll (default 10 s, at least 100 ms).
	RecheckRejected time.Duration

	// HTTPClient to use (proxies, TLS roots...). Its Timeout should be zero: the client
	// bounds every request itself. Default: a client with a 10 s connect timeout.
	HTTPClient *http.Client
	// Logger receives the client's log lines (nil: warnings and errors go to the
	// standard log package).
	Logger func(level Level, msg string)
	// MetricsHook is called with every metric update (name, value, labels): feed it to
	// Prometheus, expvar, StatsD... The values are also kept in Client.Metrics().
	MetricsHook func(name string, value float64, labels map[string]string)
	// Decrypt decrypts payloads of end-to-end encrypted topics (age v1 files) after their
	// SHA-256 (the ciphertext's) is verified; the cache keeps the ciphertext. Go's
	// standard library cannot decrypt age, so give AgeCommand(identityFile, 0) (Debian's
	// `age` binary) or your own (filippo.io/age). Without it such versions are rejected.
	Decrypt DecryptFunc
}

// String prints the options with the token redacted.
func (o Options) String() string {
	tok := ""
	if o.Token != "" {
		tok = "<redacted>"
	}
	return fmt.Sprintf("imprint.Options{URL: %q, FallbackURLs: %q, Token: %q, Instance: %q, Labels: %v, CacheDir: %q, SnapshotStore: %q, SnapshotKeyring: %q}",
		o.URL, o.FallbackURLs, tok, o.Instance, o.Labels, o.CacheDir, o.SnapshotStore, o.SnapshotKeyring)
}

// GoString is String, for %#v.
func (o Options) GoString() string { return o.String() }

// Level of a log line.
type Level int

const (
	LevelDebug Level = iota
	LevelInfo
	LevelWarn
	LevelError
)

func (l Level) String() string {
	switch l {
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelWarn:
		return "warn"
	default:
		return "error"
	}
}

const (
	maxLongPoll    = 60 * time.Second
	maxPollAfter   = 60 * time.Second // docs/protocol.md: honour poll_after_ms, capped
	maxRetryAfter  = 60 * time.Second
	maxLabelPairs  = 32
	maxLabelBytes  = 4096
	maxKeyLen      = 63
	maxValueLen    = 256
	maxTopicLen    = 128
	maxInstanceLen = 256
)

// settings are the Options' timings with their defaults filled in.
type settings struct {
	initialWait      time.Duration
	longPoll         time.Duration
	requestTimeout   time.Duration
	minBackoff       time.Duration
	maxBackoff       time.Duration
	clientErrorRetry time.Duration
	startupFallback  int
	recheckRejected  time.Duration
}

func orDefault(d, def time.Duration) time.Duration {
	switch {
	case d < 0:
		return 0
	case d == 0:
		return def
	default:
		return d
	}
}

func (o *Options) settings() settings {
	s := settings{
		initialWait:     orDefault(o.InitialWait, 5*time.Second),
		longPoll:        orDefault(o.LongPoll, 30*time.Second),
		requestTimeout:  orDefault(o.RequestTimeout, 30*time.Second),
		minBackoff:      orDefault(o.MinBackoff, 500*time.Millisecond),
		maxBackoff:      orDefault(o.MaxBackoff, 30*time.Second),
		recheckRejected: orDefault(o.RecheckRejected, 10*time.Second),
		startupFallback: o.StartupFallback,
	}
	if s.longPoll > maxLongPoll {
		s.longPoll = maxLongPoll
	}
	if s.requestTimeout <= 0 {
		s.requestTimeout = 30 * time.Second
	}
	if s.minBackoff < time.Millisecond {
		s.minBackoff = time.Millisecond
	}
	if s.maxBackoff < s.minBackoff {
		s.maxBackoff = s.minBackoff
	}
	s.clientErrorRetry = orDefault(o.ClientErrorRetry, 2*s.maxBackoff)
	if s.clientErrorRetry < s.minBackoff {
		s.clientErrorRetry = s.minBackoff
	}
	if s.recheckRejected < 100*time.Millisecond {
		s.recheckRejected = 100 * time.Millisecond
	}
	switch {
	case s.startupFallback == 0:
		s.startupFallback = 3
	case s.startupFallback < 0:
		s.startupFallback = 0
	}
	return s
}

// serverBase checks a server URL and returns it without a trailing slash.
func serverBase(raw string) (string, error) {
	base := strings.TrimRight(strings.TrimSpace(raw), "/")
	u, err := url.Parse(base)
	if err != nil {
		return "", &ConfigError{Msg: fmt.Sprintf("server URL %q: %v", raw, err)}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", &ConfigError{Msg: fmt.Sprintf("server URL %q must be http:// or https://", raw)}
	}
	if u.Host == "" {
		return "", &ConfigError{Msg: fmt.Sprintf("server URL %q has no host", raw)}
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", &ConfigError{Msg: fmt.Sprintf("server URL %q: no query or fragment, please", raw)}
	}
	return base, nil
}

// defaultInstance is the host name (HOSTNAME first, as containers set it).
func defaultInstance() string {
	if h := strings.TrimSpace(os.Getenv("HOSTNAME")); h != "" {
		return h
	}
	if h, err := os.Hostname(); err == nil && strings.TrimSpace(h) != "" {
		return strings.TrimSpace(h)
	}
	return "imprint-client"
}

func checkInstance(s string) error {
	if s == "" || len(s) > maxInstanceLen {
		return &ConfigError{Msg: "the instance name must be 1-256 characters without control characters"}
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return &ConfigError{Msg: "the instance name must be 1-256 characters without control characters"}
		}
	}
	return nil
}

// ValidTopic reports whether name is a topic name the server accepts.
func ValidTopic(name string) bool {
	if name == "" || len(name) > maxTopicLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		lowerOrDigit := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if i == 0 && !lowerOrDigit {
			return false
		}
		if !lowerOrDigit && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func validKey(k string) bool {
	if k == "" || len(k) > maxKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if i == 0 && !alnum {
			return false
		}
		if !alnum && c != '.' && c != '_' && c != '-' && c != '/' {
			return false
		}
	}
	return true
}

func validValue(v string) bool {
	if v == "" || len(v) > maxValueLen {
		return false
	}
	for _, r := range v {
		if r == ',' || r == '=' || r == '*' || isSpaceOrControl(r) {
			return false
		}
	}
	return true
}

func isSpaceOrControl(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\v', '\f', '\r', 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
		return true
	}
	if r >= 0x2000 && r <= 0x200A {
		return true
	}
	return r < 0x20 || (r >= 0x7f && r < 0xa0)
}

// CheckLabels applies the server's rules to a node's labels: at most 32 pairs, 4096 bytes
// of keys and values in all, keys of letters, digits, '.', '_', '-', '/' (starting with
// a letter or digit, at most 63), values of 1-256 characters without ',', '=', '*' or
// whitespace.
func CheckLabels(labels map[string]string) error {
	if len(labels) > maxLabelPairs {
		return &ConfigError{Msg: fmt.Sprintf("labels: at most %d pairs (got %d)", maxLabelPairs, len(labels))}
	}
	total := 0
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := labels[k]
		if !validKey(k) {
			return &ConfigError{Msg: fmt.Sprintf("labels: label key %q is invalid: keys start with a letter or digit and contain only letters, digits, '.', '_', '-' or '/' (at most 63 characters)", k)}
		}
		if !validValue(v) {
			return &ConfigError{Msg: fmt.Sprintf("labels: label value %q for key %q is invalid: values are 1 to 256 characters without ',', '=', '*' or whitespace", v, k)}
		}
		total += len(k) + len(v)
	}
	if total > maxLabelBytes {
		return &ConfigError{Msg: fmt.Sprintf("labels: at most %d bytes of keys and values in all", maxLabelBytes)}
	}
	return nil
}

// ParseLabels reads "region=eu-west-1,app=checkout" ("*" or "" for none) with the
// server's rules.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	s = strings.TrimSpace(s)
	if s == "" || s == "*" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, &ConfigError{Msg: fmt.Sprintf("labels: %q is not key=value", part)}
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, dup := out[k]; dup {
			return nil, &ConfigError{Msg: fmt.Sprintf("labels: label key %q appears twice", k)}
		}
		out[k] = v
	}
	if err := CheckLabels(out); err != nil {
		return nil, err
	}
	return out, nil
}
