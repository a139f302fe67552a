package imprint

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A scripted stand-in for the server: onPoll decides each poll's answer, payloads are
// served from files (with Range), every request is recorded.

type gotPoll struct {
	Consumer struct {
		Instance string            `json:"instance"`
		Labels   map[string]string `json:"labels"`
	} `json:"consumer"`
	Topics  map[string]*uint64 `json:"topics"`
	Applied map[string]report  `json:"applied"`
	WaitMs  int64              `json:"wait_ms"`
}

type gotRequest struct {
	Method, Path string
	Header       http.Header
}

type reply struct {
	status int
	body   any
	header map[string]string
}

type fake struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	polls  []gotPoll
	reqs   []gotRequest
	files  map[string][]byte
	other  map[string]any // JSON answers of other GETs, by path with query
	onPoll func(p gotPoll) reply
	// cutAfter: the next n downloads of a path break off after this many bytes
	cut map[string]int
	// status: a path with query answered with this error status (a region that is down)
	status map[string]int
}

func newFake(t *testing.T) *fake {
	f := &fake{t: t, files: map[string][]byte{}, other: map[string]any{}, cut: map[string]int{}, status: map[string]int{}}
	f.onPoll = func(gotPoll) reply { return answer(nil, nil, 0) }
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fake) url() string { return f.srv.URL }

func (f *fake) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, gotRequest{r.Method, r.URL.RequestURI(), r.Header.Clone()})
	f.mu.Unlock()
	if r.Method == http.MethodPost && r.URL.Path == "/api/v1/poll" {
		var p gotPoll
		data, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(data, &p); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		f.mu.Lock()
		f.polls = append(f.polls, p)
		on := f.onPoll
		f.mu.Unlock()
		rep := on(p)
		for k, v := range rep.header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rep.status)
		_ = json.NewEncoder(w).Encode(rep.body)
		return
	}
	f.mu.Lock()
	data, isFile := f.files[r.URL.RequestURI()] // a region's copy (?region=), else by path
	if !isFile {
		data, isFile = f.files[r.URL.Path]
	}
	status := f.status[r.URL.RequestURI()]
	other, isOther := f.other[r.URL.RequestURI()]
	cut := f.cut[r.URL.Path]
	if cut > 0 {
		delete(f.cut, r.URL.Path)
	}
	f.mu.Unlock()
	switch {
	case status != 0:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, `{"error":{"code":"object_store_unavailable","message":"down"}}`)
	case isOther:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(other)
	case isFile:
		start := 0
		if rng := r.Header.Get("Range"); rng != "" {
			start, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rng, "bytes="), "-"))
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(data)-1, len(data)))
			w.Header().Set("Content-Length", strconv.Itoa(len(data)-start))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		}
		body := data[start:]
		if cut > 0 && cut < len(body) {
			_, _ = w.Write(body[:cut])
			w.(http.Flusher).Flush()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				conn.Close()
			}
			return
		}
		_, _ = w.Write(body)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		_, _ = io.WriteString(w, `{"error":{"code":"not_found","message":"no such thing"}}`)
	}
}

func (f *fake) setPoll(fn func(gotPoll) reply) {
	f.mu.Lock()
	f.onPoll = fn
	f.mu.Unlock()
}

func (f *fake) pollsSeen() []gotPoll {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]gotPoll(nil), f.polls...)
}

func (f *fake) requests() []gotRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]gotRequest(nil), f.reqs...)
}

func (f *fake) countPath(path string) int {
	n := 0
	for _, r := range f.requests() {
		if r.Path == path {
			n++
		}
	}
	return n
}

func shaHex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

type upd struct {
	version uint64
	data    []byte
	inline  bool
	sha     string
	pinned  bool
	topic   string
}

func (u upd) json() map[string]any {
	topic := u.topic
	if topic == "" {
		topic = "t.a"
	}
	sha := u.sha
	if sha == "" {
		sha = shaHex(u.data)
	}
	m := map[string]any{
		"version": u.version, "pinned": u.pinned, "metadata": map[string]string{}, "content_type": "application/json",
		"size": len(u.data), "sha256": sha, "data_url": fmt.Sprintf("/api/v1/topics/%s/versions/%d/data", topic, u.version),
	}
	if u.inline {
		m["data_base64"] = base64.StdEncoding.EncodeToString(u.data)
	}
	return m
}

func answer(updates map[string]any, missing map[string]string, after int) reply {
	if updates == nil {
		updates = map[string]any{}
	}
	if missing == nil {
		missing = map[string]string{}
	}
	return reply{status: 200, body: map[string]any{"updates": updates, "missing": missing, "poll_after_ms": after}}
}

// deadURL is a URL where nothing listens (connections are refused).
func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// eventually polls check until it holds (a test's patience, not a bound on the code).
func eventually(t *testing.T, what string, timeout time.Duration, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if check() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not reached within %v", what, timeout)
}

func quiet(t *testing.T) func(Level, string) {
	return func(l Level, msg string) {
		if testing.Verbose() {
			t.Logf("%s %s", l, msg)
		}
	}
}

func newClient(t *testing.T, o Options) *Client {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet(t)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
