// Command imprint-conformance-adapter is the conformance adapter of the Go client: a tiny
// HTTP service the suite's harness drives (the adapter protocol of conformance/README.md).
// It listens on 127.0.0.1 on a free port (or --port N), prints
// "listening on http://<addr>" as its first line, logs to stderr, and exits when its
// stdin is a pipe that reaches end of file (the harness is gone).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	imprint "github.com/imprint/imprint-go"
)

type settings struct {
	LongPollMs        *int64 `json:"long_poll_ms"`
	InitialWaitMs     *int64 `json:"initial_wait_ms"`
	RequestTimeoutMs  *int64 `json:"request_timeout_ms"`
	BackoffMinMs      *int64 `json:"backoff_min_ms"`
	BackoffMaxMs      *int64 `json:"backoff_max_ms"`
	StartupFallback   *int   `json:"startup_fallback"`
	RecheckRejectedMs *int64 `json:"recheck_rejected_ms"`
}

type topicSpec struct {
	Name    string          `json:"name"`
	Decoder string          `json:"decoder"`
	Default json.RawMessage `json:"default"`
}

type newClient struct {
	URL             string            `json:"url"`
	Token           *string           `json:"token"`
	Instance        string            `json:"instance"`
	Labels          map[string]string `json:"labels"`
	CacheDir        *string           `json:"cache_dir"`
	SnapshotStore   *string           `json:"snapshot_store"`
	SnapshotKeyring *string           `json:"snapshot_keyring"`
	Topics          []topicSpec       `json:"topics"`
	Settings        settings          `json:"settings"`
}

type corruptCache struct {
	CacheDir string `json:"cache_dir"`
	Topic    string `json:"topic"`
}

// watched is a subscription and what its changes channel delivered: (count, last value).
type watched struct {
	sub     *imprint.Subscription[json.RawMessage]
	mu      sync.Mutex
	changes uint64
	last    json.RawMessage
}

type entry struct {
	client *imprint.Client
	mu     sync.Mutex
	subs   map[string]*watched
}

func (e *entry) sub(topic string) (*watched, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w, ok := e.subs[topic]
	return w, ok
}

type adapter struct {
	next    atomic.Uint64
	mu      sync.Mutex
	clients map[string]*entry
	logger  *log.Logger
}

type failure struct {
	status int
	msg    string
}

func (f *failure) Error() string { return f.msg }

func fail(status int, format string, a ...any) error {
	return &failure{status: status, msg: fmt.Sprintf(format, a...)}
}

func main() {
	port := flag.Int("port", 0, "port to listen on (0: a free one)")
	flag.Parse()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "imprint-conformance-adapter:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stdout, "listening on http://%s\n", ln.Addr())
	// The harness holds our stdin (a pipe) open while it needs us: its end means the
	// harness is gone (even killed), so stop. Not for a terminal or /dev/null.
	if fi, err := os.Stdin.Stat(); err == nil && fi.Mode()&os.ModeNamedPipe != 0 {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			os.Exit(0)
		}()
	}
	a := &adapter{clients: map[string]*entry{}, logger: log.New(os.Stderr, "go-adapter ", log.LstdFlags|log.Lmicroseconds)}
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "imprint-conformance-adapter:", err)
		os.Exit(1)
	}
}

func (a *adapter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var out any
	var err error
	status := http.StatusOK
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	switch {
	case r.URL.Path == "/" && r.Method == http.MethodGet:
		out = map[string]any{"name": "go", "capabilities": []string{
			"json", "bytes", "file", "cache", "corrupt_cache", "snapshot", "startup_fallback", "token", "shutdown", "listener",
			"subscribe", "regions", "sealed_snapshots",
		}}
	case r.URL.Path == "/clients" && r.Method == http.MethodPost:
		out, err = a.create(r)
	case r.URL.Path == "/cache/corrupt" && r.Method == http.MethodPost:
		err = a.corrupt(r)
		status = http.StatusNoContent
	case len(parts) == 3 && parts[0] == "clients" && parts[2] == "topics" && r.Method == http.MethodPost:
		err = a.subscribeLater(parts[1], r)
		status = http.StatusNoContent
	case len(parts) == 4 && parts[0] == "clients" && parts[2] == "topics" && r.Method == http.MethodGet:
		out, err = a.observe(parts[1], parts[3])
	case len(parts) == 3 && parts[0] == "clients" && parts[2] == "shutdown" && r.Method == http.MethodPost:
		err = a.shutdown(parts[1], false)
		status = http.StatusNoContent
	case len(parts) == 2 && parts[0] == "clients" && r.Method == http.MethodDelete:
		err = a.shutdown(parts[1], true)
		status = http.StatusNoContent
	default:
		err = fail(http.StatusNotFound, "no route %s %s", r.Method, r.URL.Path)
	}
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		var f *failure
		if !errors.As(err, &f) {
			f = &failure{status: http.StatusInternalServerError, msg: err.Error()}
		}
		w.WriteHeader(f.status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": f.msg})
		return
	}
	w.WriteHeader(status)
	if status != http.StatusNoContent {
		_ = json.NewEncoder(w).Encode(out)
	}
}

// decode reads a JSON body strictly: an unknown field is refused.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fail(http.StatusBadRequest, "request body: %v", err)
	}
	return nil
}

func ms(v *int64, zero time.Duration) time.Duration {
	if v == nil {
		return 0 // the client's default
	}
	if *v <= 0 {
		return zero
	}
	return time.Duration(*v) * time.Millisecond
}

func (a *adapter) create(r *http.Request) (any, error) {
	var spec newClient
	if err := decode(r, &spec); err != nil {
		return nil, err
	}
	s := spec.Settings
	opts := imprint.Options{
		URL:             spec.URL,
		Instance:        spec.Instance,
		Labels:          spec.Labels,
		LongPoll:        ms(s.LongPollMs, -1),
		InitialWait:     ms(s.InitialWaitMs, -1),
		RequestTimeout:  ms(s.RequestTimeoutMs, time.Millisecond),
		MinBackoff:      ms(s.BackoffMinMs, time.Millisecond),
		MaxBackoff:      ms(s.BackoffMaxMs, time.Millisecond),
		RecheckRejected: ms(s.RecheckRejectedMs, time.Millisecond),
		Logger: func(l imprint.Level, msg string) {
			if l >= imprint.LevelInfo {
				a.logger.Printf("[%s] %s %s", spec.Instance, l, msg)
			}
		},
	}
	if spec.Instance == "" {
		return nil, fail(http.StatusBadRequest, "instance is required")
	}
	if spec.Token != nil {
		opts.Token = *spec.Token
	}
	if spec.CacheDir != nil {
		opts.CacheDir = *spec.CacheDir
	}
	if spec.SnapshotStore != nil {
		opts.SnapshotStore = *spec.SnapshotStore
	}
	if spec.SnapshotKeyring != nil {
		opts.SnapshotKeyring = *spec.SnapshotKeyring
	}
	if s.StartupFallback != nil {
		opts.StartupFallback = *s.StartupFallback
		if *s.StartupFallback == 0 {
			opts.StartupFallback = -1
		}
	}
	c, err := imprint.New(opts)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "%v", err)
	}
	// Subscribed concurrently, as an application starting several would; each waits at
	// most InitialWait for the shared first poll.
	e := &entry{client: c, subs: map[string]*watched{}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for _, t := range spec.Topics {
		t := t
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, err := subscribe(c, t)
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			e.mu.Lock()
			e.subs[t.Name] = watch(sub)
			e.mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		_ = c.Close()
		return nil, firstErr
	}
	id := fmt.Sprintf("c%d", a.next.Add(1))
	a.mu.Lock()
	a.clients[id] = e
	a.mu.Unlock()
	return map[string]string{"id": id}, nil
}

// subscribe subscribes c to t; a refusal (a bad topic, a second subscription, a closed
// client) is a 400.
func subscribe(c *imprint.Client, t topicSpec) (*imprint.Subscription[json.RawMessage], error) {
	sub, err := subscribeAs(c, t)
	var f *failure
	if err != nil && !errors.As(err, &f) {
		err = fail(http.StatusBadRequest, "subscribe %s: %v", t.Name, err)
	}
	return sub, err
}

func subscribeAs(c *imprint.Client, t topicSpec) (*imprint.Subscription[json.RawMessage], error) {
	ctx := context.Background()
	switch t.Decoder {
	case "json":
		def := json.RawMessage("null")
		if len(t.Default) > 0 {
			def = t.Default
		}
		return imprint.Subscribe(ctx, c, t.Name, def, func(p imprint.Payload) (json.RawMessage, error) {
			if !json.Valid(p.Data) {
				return nil, errors.New("the payload is not JSON")
			}
			return json.RawMessage(append([]byte(nil), p.Data...)), nil
		})
	case "bytes":
		return imprint.Subscribe(ctx, c, t.Name, json.RawMessage(`""`), func(p imprint.Payload) (json.RawMessage, error) {
			return json.Marshal(lossy(p.Data))
		})
	case "file":
		return imprint.SubscribeFile(ctx, c, t.Name, json.RawMessage("null"), describeFile)
	default:
		return nil, fail(http.StatusBadRequest, "unknown decoder %q (json, bytes or file)", t.Decoder)
	}
}

// lossy decodes UTF-8, each invalid byte becoming U+FFFD.
func lossy(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		sb.WriteRune(r) // RuneError (U+FFFD) for an invalid byte
		b = b[n:]
	}
	return sb.String()
}

// describeFile: what is on disk, read back (not what the update claimed).
func describeFile(p imprint.Payload) (json.RawMessage, error) {
	f, err := os.Open(p.Path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.Path, err)
	}
	return json.Marshal(map[string]any{"size": n, "sha256": hex.EncodeToString(h.Sum(nil))})
}

// watch registers the listener (the changes channel) now, right after Subscribe returned.
func watch(sub *imprint.Subscription[json.RawMessage]) *watched {
	w := &watched{sub: sub, last: json.RawMessage("null")}
	ch := sub.Changes()
	go func() {
		for v := range ch {
			w.mu.Lock()
			w.changes++
			w.last = v
			w.mu.Unlock()
		}
	}()
	return w
}

func (a *adapter) entry(id string) (*entry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.clients[id]
	if !ok {
		return nil, fail(http.StatusNotFound, "no client %s", id)
	}
	return e, nil
}

func (a *adapter) observe(id, topic string) (any, error) {
	e, err := a.entry(id)
	if err != nil {
		return nil, err
	}
	w, ok := e.sub(topic)
	if !ok {
		return nil, fail(http.StatusNotFound, "client %s has no topic %s", id, topic)
	}
	c := w.sub.Current()
	var version *uint64
	if c.HasVersion {
		v := c.Version
		version = &v
	}
	w.mu.Lock()
	changes, last := w.changes, w.last
	w.mu.Unlock()
	return map[string]any{
		"value": c.Value, "version": version, "source": string(c.Source), "pinned": c.Pinned,
		"changes": changes, "last_change": last, "served_region": servedRegion(c.ServedRegion),
	}, nil
}

// subscribeLater: POST /clients/{id}/topics, one more subscription on a running client.
func (a *adapter) subscribeLater(id string, r *http.Request) error {
	var t topicSpec
	if err := decode(r, &t); err != nil {
		return err
	}
	e, err := a.entry(id)
	if err != nil {
		return err
	}
	if _, dup := e.sub(t.Name); dup {
		return fail(http.StatusBadRequest, "client %s has %s already", id, t.Name)
	}
	sub, err := subscribe(e.client, t)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.subs[t.Name] = watch(sub)
	e.mu.Unlock()
	return nil
}

func (a *adapter) shutdown(id string, forget bool) error {
	e, err := a.entry(id)
	if err != nil {
		return err
	}
	if forget {
		a.mu.Lock()
		delete(a.clients, id)
		a.mu.Unlock()
	}
	return e.client.Close()
}

// corrupt: the client's cache layout is <dir>/<topic>/v<version>-<sha>.bin beside
// meta.json; every payload file gets its bytes flipped (same length), the checksums stay.
func (a *adapter) corrupt(r *http.Request) error {
	var req corruptCache
	if err := decode(r, &req); err != nil {
		return err
	}
	if !imprint.ValidTopic(req.Topic) {
		return fail(http.StatusBadRequest, "invalid topic %q", req.Topic)
	}
	dir := filepath.Join(req.CacheDir, req.Topic)
	bins, _ := filepath.Glob(filepath.Join(dir, "*.bin"))
	if len(bins) == 0 {
		return fail(http.StatusNotFound, "no cached payload in %s", dir)
	}
	for _, p := range bins {
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i := range data {
			data[i] = ^data[i]
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// servedRegion is the region as the adapter protocol reads it: null when none served.
func servedRegion(r string) any {
	if r == "" {
		return nil
	}
	return r
}
