package imprint

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var bg = context.Background()

type obj = map[string]any

func TestBackoffDoublesToItsCapWithJitter(t *testing.T) {
	b := newBackoff(500*time.Millisecond, 30*time.Second)
	first := b.next()
	if first < 250*time.Millisecond || first > 500*time.Millisecond {
		t.Fatalf("first delay %v not in [250ms, 500ms]", first)
	}
	var last time.Duration
	seen := map[time.Duration]bool{}
	for i := 0; i < 30; i++ {
		last = b.next()
		seen[last] = true
		if last > 30*time.Second {
			t.Fatalf("delay %v above the cap", last)
		}
	}
	if last < 15*time.Second {
		t.Fatalf("capped at 30 s, at least half of it: %v", last)
	}
	if len(seen) < 5 {
		t.Fatalf("no jitter: %v", seen)
	}
	b.reset()
	if d := b.next(); d > 500*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

func TestOptionsAreCheckedWithClearErrors(t *testing.T) {
	bad := []Options{
		{},
		{URL: "ftp://x"},
		{URL: "not a url"},
		{URL: "http://a:1", FallbackURLs: []string{"nope"}},
		{URL: "http://a:1", Labels: map[string]string{"-a": "1"}},
		{URL: "http://a:1", Labels: map[string]string{"a": "x y"}},
		{URL: "http://a:1", Instance: "bad\nname"},
		{URL: "http://a:1", SnapshotStore: "s3://bucket/prefix"},
		{URL: "http://a:1", SnapshotStore: "file://relative/dir"},
		{URL: "http://a:1", SnapshotURL: func(context.Context, string) (string, error) { return "", nil }},
	}
	for _, o := range bad {
		_, err := New(o)
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("New(%+v): want a ConfigError, got %v", o.URL, err)
		}
	}
	many := map[string]string{}
	for i := 0; i < 33; i++ {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	if _, err := New(Options{URL: "http://a:1", Labels: many}); err == nil {
		t.Error("33 labels accepted")
	}
	if m, err := ParseLabels(" region=eu-west-1 , app=checkout"); err != nil || m["region"] != "eu-west-1" || len(m) != 2 {
		t.Errorf("ParseLabels: %v %v", m, err)
	}
	for _, s := range []string{"a", "a=1,a=2", "a=x y", "-a=1"} {
		if _, err := ParseLabels(s); err == nil {
			t.Errorf("ParseLabels(%q) accepted", s)
		}
	}
	for _, s := range []string{"*", ""} {
		if m, err := ParseLabels(s); err != nil || len(m) != 0 {
			t.Errorf("ParseLabels(%q): %v %v", s, m, err)
		}
	}
	c := newClient(t, Options{URL: "http://imprint:3000/", Token: "s3cret", Instance: "i-1"})
	if got := c.url("/api/v1/poll"); got != "http://imprint:3000/api/v1/poll" {
		t.Errorf("url: %s", got)
	}
	if !c.isOurs("http://imprint:3000/api/v1/topics/t/versions/1/data") || c.isOurs("http://imprint:3000.evil.example/x") || c.isOurs("http://imprint:30000/x") {
		t.Error("isOurs compares whole origins")
	}
	o := Options{URL: "http://imprint:3000", Token: "s3cret"}
	for _, printed := range []string{fmt.Sprint(c), fmt.Sprintf("%v", o), fmt.Sprintf("%+v", o), fmt.Sprintf("%#v", o)} {
		if strings.Contains(printed, "s3cret") || !strings.Contains(printed, "imprint") {
			t.Errorf("the token is printed: %s", printed)
		}
	}
	for _, topic := range []string{"", "..", "a/b", "Caps", strings.Repeat("a", 129), ".a"} {
		if _, err := SubscribeJSON[any](bg, c, topic, nil); err == nil {
			t.Errorf("topic %q accepted", topic)
		}
	}
	two := newClient(t, Options{URL: "http://a:1", FallbackURLs: []string{"http://b:2/"}})
	two.failOver()
	if two.url("/x") != "http://b:2/x" {
		t.Error("fail-over")
	}
	two.failOver()
	if two.url("/x") != "http://a:1/x" {
		t.Error("fail-over wraps around")
	}
}

func TestAnUnreachableServerCostsNoWaitAndServesTheDefault(t *testing.T) {
	c := newClient(t, Options{URL: deadURL(t), InitialWait: 5 * time.Second})
	start := time.Now()
	sub, err := SubscribeJSON(bg, c, "t.a", obj{"d": 1.0})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("a refused connection is an answer; took %v", took)
	}
	cur := sub.Current()
	if cur.Value["d"] != 1.0 || cur.Source != SourceDefault || cur.HasVersion {
		t.Fatalf("current: %+v", cur)
	}
	eventually(t, "the network error counted", 5*time.Second, func() bool {
		return c.Metrics().Get(MetricPollErrors, "kind", "network") >= 1
	})
}

func TestOnePollForAllTopicsWithHeldVersionsLabelsAndToken(t *testing.T) {
	f := newFake(t)
	data := []byte(`{"a": 1}`)
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["t.a"] == nil {
			return answer(obj{"t.a": upd{version: 3, data: data, inline: true}.json()}, nil, 0)
		}
		return answer(nil, obj2("t.b", "topic_not_found"), 0)
	})
	var hooked atomic.Int64
	c := newClient(t, Options{URL: f.url(), Token: "tok", Instance: "n1", Labels: map[string]string{"region": "eu"},
		LongPoll: 200 * time.Millisecond, MetricsHook: func(string, float64, map[string]string) { hooked.Add(1) }})
	a, err := SubscribeJSON(bg, c, "t.a", map[string]int{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.SubscribeBytes(bg, "t.b", []byte("b-default"))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := a.Version(); a.Get()["a"] != 1 || !ok || v != 3 || a.Source() != SourceServer {
		t.Fatalf("a: %v v%d %s", a.Get(), v, a.Source())
	}
	if string(b.Get()) != "b-default" || b.Source() != SourceDefault {
		t.Fatalf("b: %q", b.Get())
	}
	var batched gotPoll
	eventually(t, "a batched poll", 10*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if len(p.Topics) == 2 && p.Topics["t.a"] != nil {
				batched = p
				return true
			}
		}
		return false
	})
	if batched.Consumer.Instance != "n1" || batched.Consumer.Labels["region"] != "eu" || *batched.Topics["t.a"] != 3 {
		t.Fatalf("poll: %+v", batched)
	}
	if _, ok := batched.Topics["t.b"]; !ok || batched.Topics["t.b"] != nil {
		t.Fatal("t.b is asked about with null")
	}
	for _, r := range f.requests() {
		if r.Header.Get("Authorization") != "Bearer tok" || !strings.HasPrefix(r.Header.Get("User-Agent"), "imprint-client-go/") {
			t.Fatalf("request headers: %v", r.Header)
		}
	}
	var reports []report
	for _, p := range f.pollsSeen() {
		if r, ok := p.Applied["t.a"]; ok {
			reports = append(reports, r)
		}
	}
	// A poll abandoned for the new subscription may have reached the server: the report
	// is sent again (at least once), always the same.
	if len(reports) == 0 || len(reports) > 2 {
		t.Fatalf("reported: %+v", reports)
	}
	for _, r := range reports {
		if r != (report{Version: 3, OK: true}) {
			t.Fatalf("report: %+v", r)
		}
	}
	if c.Metrics().Get(MetricVersion, "topic", "t.a") != 3 || c.Metrics().Get(MetricUpdatesApplied, "topic", "t.a") != 1 || hooked.Load() == 0 {
		t.Fatalf("metrics: %v", c.Metrics().Snapshot())
	}
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); !errors.Is(err, ErrAlreadySubscribed) {
		t.Fatalf("second subscription: %v", err)
	}
}

func obj2(k, v string) map[string]string { return map[string]string{k: v} }

// offer is the version a fake serves to whoever does not hold it.
type offer struct {
	mu sync.Mutex
	u  upd
}

func (o *offer) set(u upd) { o.mu.Lock(); o.u = u; o.mu.Unlock() }

func (o *offer) poll(topic string) func(gotPoll) reply {
	return func(p gotPoll) reply {
		o.mu.Lock()
		u := o.u
		o.mu.Unlock()
		if h := p.Topics[topic]; h == nil || *h != u.version {
			return answer(obj{topic: u.json()}, nil, 0)
		}
		return answer(nil, nil, 0)
	}
}

func TestABadPayloadKeepsTheOldValueIsReportedAndNotRetried(t *testing.T) {
	f := newFake(t)
	of := &offer{u: upd{version: 1, data: []byte(`{"v": 1}`), inline: true}}
	f.setPoll(of.poll("t.a"))
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond, RecheckRejected: 300 * time.Millisecond})
	sub, err := SubscribeJSON(bg, c, "t.a", map[string]int{})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []int
	sub.OnChange(func(v map[string]int) { mu.Lock(); seen = append(seen, v["v"]); mu.Unlock() })
	changes := sub.Changes()
	if sub.Get()["v"] != 1 {
		t.Fatalf("first value %v", sub.Get())
	}
	of.set(upd{version: 2, data: []byte("not json"), inline: true})
	var failed report
	eventually(t, "a failure report", 10*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if r, ok := p.Applied["t.a"]; ok && !r.OK {
				failed = r
				return true
			}
		}
		return false
	})
	if failed.Version != 2 || !strings.Contains(failed.Error, "decode failed") {
		t.Fatalf("report: %+v", failed)
	}
	if v, _ := sub.Version(); sub.Get()["v"] != 1 || v != 1 {
		t.Fatal("the old value stays")
	}
	n := len(f.pollsSeen())
	time.Sleep(700 * time.Millisecond)
	if extra := len(f.pollsSeen()) - n; extra > 5 {
		t.Fatalf("stuck on the rejected version: short polls every recheck, not a spin (%d polls)", extra)
	}
	if c.Metrics().Get(MetricApplyFailures, "topic", "t.a") != 1 {
		t.Fatalf("the rejected version is tried once: %v", c.Metrics().Snapshot())
	}
	of.set(upd{version: 3, data: []byte(`{"v": 3}`), inline: true})
	eventually(t, "the fix picked up", 10*time.Second, func() bool { v, _ := sub.Version(); return v == 3 })
	select {
	case v := <-changes:
		if v["v"] != 3 {
			t.Fatalf("changes: %v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing on the changes channel")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != 3 {
		t.Fatalf("listener saw %v", seen)
	}
}

func TestADecoderPanicIsAFailureAndTheOldValueStays(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(p gotPoll) reply {
		return answer(obj{"t.a": upd{version: 1, data: []byte("boom"), inline: true}.json()}, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond, StartupFallback: -1})
	sub, err := Subscribe(bg, c, "t.a", "default", func(p Payload) (string, error) { panic("the decoder broke") })
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the failure report", 10*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if r, ok := p.Applied["t.a"]; ok && !r.OK && strings.Contains(r.Error, "the decoder broke") {
				return true
			}
		}
		return false
	})
	if sub.Get() != "default" || sub.Source() != SourceDefault {
		t.Fatalf("value %q from %s", sub.Get(), sub.Source())
	}
}

func TestAChecksumMismatchIsDownloadedOnceMoreThenRejected(t *testing.T) {
	f := newFake(t)
	data := []byte("payload")
	u := upd{version: 5, data: data, sha: strings.Repeat("0", 64)}
	path := "/api/v1/topics/t.a/versions/5/data"
	f.files[path] = data
	f.setPoll(func(gotPoll) reply { return answer(obj{"t.a": u.json()}, nil, 0) })
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond, StartupFallback: -1})
	sub, err := c.SubscribeBytes(bg, "t.a", []byte("default"))
	if err != nil {
		t.Fatal(err)
	}
	var failed report
	eventually(t, "a failure report", 10*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if r, ok := p.Applied["t.a"]; ok && !r.OK {
				failed = r
				return true
			}
		}
		return false
	})
	if !strings.Contains(failed.Error, "checksum mismatch") {
		t.Fatalf("report %+v", failed)
	}
	if string(sub.Get()) != "default" {
		t.Fatal("the default stays")
	}
	if n := f.countPath(path); n != 2 {
		t.Fatalf("downloaded %d times, want 2", n)
	}
}

func TestAnInlinePayloadThatDoesNotVerifyIsDownloaded(t *testing.T) {
	f := newFake(t)
	data := []byte(`"right"`)
	j := upd{version: 2, data: data, inline: true}.json()
	j["data_base64"] = base64.StdEncoding.EncodeToString([]byte(`"wrong"`))
	f.files["/api/v1/topics/t.a/versions/2/data"] = data
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["t.a"] == nil {
			return answer(obj{"t.a": j}, nil, 0)
		}
		return answer(nil, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond})
	sub, err := SubscribeJSON(bg, c, "t.a", "")
	if err != nil {
		t.Fatal(err)
	}
	if sub.Get() != "right" {
		t.Fatalf("value %q", sub.Get())
	}
}

func TestAnInterruptedDownloadResumesWithRange(t *testing.T) {
	f := newFake(t)
	data := make([]byte, 300_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	path := "/api/v1/topics/t.a/versions/1/data"
	f.files[path] = data
	f.cut[path] = 100_000
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["t.a"] == nil {
			return answer(obj{"t.a": upd{version: 1, data: data}.json()}, nil, 0)
		}
		return answer(nil, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond})
	sub, err := c.SubscribeBytes(bg, "t.a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if string(sub.Get()) != string(data) {
		t.Fatalf("got %d bytes", len(sub.Get()))
	}
	var ranges []string
	for _, r := range f.requests() {
		if r.Path == path {
			ranges = append(ranges, r.Header.Get("Range"))
		}
	}
	if len(ranges) != 2 || ranges[0] != "" || !strings.HasPrefix(ranges[1], "bytes=") || ranges[1] == "bytes=0-" {
		t.Fatalf("downloads: %q", ranges)
	}
}

func TestASilentDownloadIsBoundedByTheRequestTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/poll" {
			_ = json.NewEncoder(w).Encode(answer(obj{"t.a": upd{version: 1, data: []byte("0123456789")}.json()}, nil, 0).body)
			return
		}
		w.Header().Set("Content-Length", "10")
		_, _ = w.Write([]byte("01234"))
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	c := newClient(t, Options{URL: srv.URL, RequestTimeout: 300 * time.Millisecond, InitialWait: 10 * time.Second,
		MinBackoff: time.Second, MaxBackoff: time.Second})
	start := time.Now()
	sub, err := c.SubscribeBytes(bg, "t.a", []byte("d"))
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a silent download held the start-up for %v", took)
	}
	if string(sub.Get()) != "d" {
		t.Fatalf("value %q", sub.Get())
	}
	eventually(t, "the download error counted", 5*time.Second, func() bool {
		return c.Metrics().Get(MetricPollErrors, "kind", "download") >= 1
	})
}

func TestFilesStreamToTheCacheAndTheCacheServesTheNextStart(t *testing.T) {
	f := newFake(t)
	dir := t.TempDir()
	data := make([]byte, 256_000)
	for i := range data {
		data[i] = byte(i)
	}
	u := upd{version: 7, data: data, topic: "m.model"}
	f.files["/api/v1/topics/m.model/versions/7/data"] = data
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["m.model"] == nil {
			return answer(obj{"m.model": u.json()}, nil, 0)
		}
		return answer(nil, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), CacheDir: dir, LongPoll: 100 * time.Millisecond})
	sub, err := c.SubscribeFilePath(bg, "m.model")
	if err != nil {
		t.Fatal(err)
	}
	path := sub.Get()
	got, err := os.ReadFile(path)
	if err != nil || string(got) != string(data) || filepath.Dir(path) != filepath.Join(dir, "m.model") {
		t.Fatalf("file %s: %v", path, err)
	}
	c.Close()
	var meta cacheMeta
	raw, _ := os.ReadFile(filepath.Join(dir, "m.model", "meta.json"))
	if err := json.Unmarshal(raw, &meta); err != nil || meta.Version != 7 || meta.File != cacheFileName(7, shaHex(data)) || meta.Size != uint64(len(data)) {
		t.Fatalf("meta.json: %s %v", raw, err)
	}
	// The server is down now: the cache is used at once.
	c2 := newClient(t, Options{URL: deadURL(t), CacheDir: dir})
	sub2, err := SubscribeFile(bg, c2, "m.model", []byte(nil), func(p Payload) ([]byte, error) { return os.ReadFile(p.Path) })
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := sub2.Version(); string(sub2.Get()) != string(data) || sub2.Source() != SourceCache || v != 7 {
		t.Fatalf("from the cache: v%d %s", v, sub2.Source())
	}
	// A memory subscription reads the same cache entry.
	c3 := newClient(t, Options{URL: deadURL(t), CacheDir: dir})
	sub3, _ := c3.SubscribeBytes(bg, "m.model", nil)
	if string(sub3.Get()) != string(data) || sub3.Source() != SourceCache {
		t.Fatal("bytes from the cache")
	}
}

func TestTheCacheIsConfirmedByTheServerAndACorruptCacheIsNotUsed(t *testing.T) {
	dir := t.TempDir()
	st := &store{root: dir, persistent: true}
	data := []byte("[1]")
	p, err := st.writePayload("t.a", 1, shaHex(data), data)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.commit(cacheMeta{Topic: "t.a", Version: 1, SHA256: shaHex(data), Size: 3, File: filepath.Base(p)}); err != nil {
		t.Fatal(err)
	}
	f := newFake(t)
	f.setPoll(func(gotPoll) reply { return answer(nil, nil, 0) }) // v1 is current
	c := newClient(t, Options{URL: f.url(), CacheDir: dir, LongPoll: 100 * time.Millisecond})
	sub, _ := SubscribeJSON(bg, c, "t.a", []int{})
	if sub.Get()[0] != 1 || sub.Source() != SourceServer {
		t.Fatalf("confirmed: %v %s", sub.Get(), sub.Source())
	}
	if p := f.pollsSeen()[0]; p.Topics["t.a"] == nil || *p.Topics["t.a"] != 1 {
		t.Fatal("the cached version is the one held")
	}
	c.Close()
	if err := os.WriteFile(p, []byte("[2]"), 0o644); err != nil {
		t.Fatal(err)
	}
	c2 := newClient(t, Options{URL: deadURL(t), CacheDir: dir})
	sub2, _ := SubscribeJSON(bg, c2, "t.a", []int{9})
	if sub2.Source() != SourceDefault || sub2.Get()[0] != 9 {
		t.Fatalf("a corrupt cache is not used: %s", sub2.Source())
	}
}

func TestTheCacheKeepsThePreviousPayloadAndPrunesOlderOnes(t *testing.T) {
	st := &store{root: t.TempDir(), persistent: true}
	for v := uint64(1); v <= 3; v++ {
		data := []byte(fmt.Sprintf("payload %d", v))
		p, err := st.writePayload("a", v, shaHex(data), data)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.commit(cacheMeta{Topic: "a", Version: v, SHA256: shaHex(data), Size: uint64(len(data)), File: filepath.Base(p)}); err != nil {
			t.Fatal(err)
		}
	}
	m, path := st.load("a", func(Level, string) {})
	if m == nil || m.Version != 3 {
		t.Fatal("v3 cached")
	}
	if b, _ := os.ReadFile(path); string(b) != "payload 3" {
		t.Fatal(string(b))
	}
	bins, _ := filepath.Glob(filepath.Join(st.root, "a", "*.bin"))
	if len(bins) != 2 {
		t.Fatalf("the current and the previous payload are kept: %v", bins)
	}
	if m, _ := (&store{root: st.root}).load("a", func(Level, string) {}); m != nil {
		t.Fatal("a non-persistent store never reads back")
	}
}

func writeManifest(t *testing.T, dir, topic string, version uint64, data []byte, inline bool) {
	t.Helper()
	m := obj{"format": 1, "topic": topic, "version": version, "sha256": shaHex(data), "size": len(data),
		"content_type": "application/json", "metadata": obj{}, "published_at": "2026-01-01T00:00:00Z", "written_at": "2026-01-01T00:00:00Z"}
	if inline {
		m["data_base64"] = base64.StdEncoding.EncodeToString(data)
	} else {
		key := fmt.Sprintf("payloads/%s/%d", topic, version)
		m["object"] = key
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, key)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, key), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	raw, _ := json.Marshal(m)
	if err := os.MkdirAll(filepath.Join(dir, "snapshots"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "snapshots", topic+".json"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestASnapshotWhenTheServerIsUnreachableAndNothingIsCached(t *testing.T) {
	dir := t.TempDir()
	writeManifest(t, dir, "t.a", 4, []byte(`{"snap": true}`), true)
	writeManifest(t, dir, "t.obj", 2, []byte(`"from an object"`), false)
	writeManifest(t, dir, "t.bad", 3, []byte(`"x"`), false)
	if err := os.WriteFile(filepath.Join(dir, "payloads/t.bad/3"), []byte(`"y"`), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, Options{URL: deadURL(t), SnapshotStore: (&url.URL{Scheme: "file", Path: dir}).String()})
	sub, err := SubscribeJSON(bg, c, "t.a", obj{})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := sub.Version(); sub.Get()["snap"] != true || sub.Source() != SourceSnapshot || v != 4 {
		t.Fatalf("snapshot: %v %s v%d", sub.Get(), sub.Source(), v)
	}
	o, _ := SubscribeJSON(bg, c, "t.obj", "")
	if o.Get() != "from an object" || o.Source() != SourceSnapshot {
		t.Fatalf("object snapshot: %q %s", o.Get(), o.Source())
	}
	bad, _ := SubscribeJSON(bg, c, "t.bad", "d")
	if bad.Get() != "d" || bad.Source() != SourceDefault {
		t.Fatal("a snapshot that does not verify is not used")
	}
	none, _ := SubscribeJSON(bg, c, "t.none", "d")
	if none.Source() != SourceDefault {
		t.Fatal("no snapshot: the default")
	}
}

func TestASnapshotOverHTTPSWithAPresigner(t *testing.T) {
	dir := t.TempDir()
	writeManifest(t, dir, "t.a", 6, []byte(`[6]`), false)
	var mu sync.Mutex
	var asked []string
	store := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.RequestURI())
		mu.Unlock()
		if r.URL.Query().Get("sig") != "ok" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		http.ServeFile(w, r, filepath.Join(dir, strings.TrimPrefix(r.URL.Path, "/bucket/")))
	}))
	defer store.Close()
	c, err := New(Options{URL: deadURL(t), Logger: quiet(t), SnapshotStore: store.URL + "/bucket", HTTPClient: store.Client(),
		SnapshotURL: func(_ context.Context, key string) (string, error) {
			return store.URL + "/bucket/" + key + "?sig=ok", nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // (HTTPClient: the test server's certificate is trusted for the store too)
	sub, _ := SubscribeJSON(bg, c, "t.a", []int{})
	if len(sub.Get()) != 1 || sub.Get()[0] != 6 || sub.Source() != SourceSnapshot {
		t.Fatalf("snapshot over https: %v %s (asked %v)", sub.Get(), sub.Source(), asked)
	}
	// Without the presigner, keys go under the base URL with its query string.
	c2, err := New(Options{URL: deadURL(t), Logger: quiet(t), SnapshotStore: store.URL + "/bucket?sig=ok"})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.snaps.http = store.Client()
	sub2, _ := SubscribeJSON(bg, c2, "t.a", []int{})
	if len(sub2.Get()) != 1 || sub2.Source() != SourceSnapshot {
		t.Fatalf("snapshot under a base URL: %v", asked)
	}
}

func TestServerErrorsBackOffAndRetryAfterIsHonoured(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(gotPoll) reply {
		return reply{status: 503, body: obj{"error": obj{"code": "busy", "message": "busy"}}, header: map[string]string{"Retry-After": "1"}}
	})
	c := newClient(t, Options{URL: f.url(), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if n := len(f.pollsSeen()); n < 1 || n > 3 {
		t.Fatalf("%d polls in 1.5 s: waits at least Retry-After between polls", n)
	}
	if c.Metrics().Get(MetricPollErrors, "kind", "server") < 1 {
		t.Fatal("server errors counted")
	}
}

func TestServerErrorsWithoutRetryAfterBackOffExponentially(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(gotPoll) reply {
		return reply{status: 500, body: obj{"error": obj{"code": "internal", "message": "x"}}}
	})
	c := newClient(t, Options{URL: f.url(), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1200 * time.Millisecond)
	n := len(f.pollsSeen())
	// 10, 20, 40, 80, then 100-200 ms: about 8-14 polls in 1.2 s; a spin would be hundreds.
	if n < 4 || n > 20 {
		t.Fatalf("%d polls in 1.2 s", n)
	}
}

func TestClientErrorsRetrySlowly(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(gotPoll) reply {
		return reply{status: 401, body: obj{"error": obj{"code": "unauthorized", "message": "bad token"}}}
	})
	c := newClient(t, Options{URL: f.url(), MinBackoff: 10 * time.Millisecond, MaxBackoff: time.Second})
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(600 * time.Millisecond)
	if c.Metrics().Get(MetricPollErrors, "kind", "client") != 1 || len(f.pollsSeen()) != 1 {
		t.Fatalf("4xx: retried after 2 x max; polls %d", len(f.pollsSeen()))
	}
}

func TestPollAfterIsHonoured(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(gotPoll) reply { return answer(nil, obj2("t.a", "topic_not_found"), 400) })
	c := newClient(t, Options{URL: f.url(), LongPoll: -1})
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1000 * time.Millisecond)
	n := len(f.pollsSeen())
	if n < 2 || n > 4 {
		t.Fatalf("%d short polls in 1 s with poll_after_ms 400", n)
	}
	for _, p := range f.pollsSeen() {
		if p.WaitMs != 0 {
			t.Fatal("LongPoll < 0: short polls")
		}
	}
}

func TestANewSubscriptionAbandonsTheOpenLongPoll(t *testing.T) {
	f := newFake(t)
	release := make(chan struct{})
	f.setPoll(func(p gotPoll) reply {
		if p.WaitMs > 0 {
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
		return answer(nil, nil, 0)
	})
	defer close(release)
	c := newClient(t, Options{URL: f.url(), LongPoll: 30 * time.Second})
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a long poll", 5*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if p.WaitMs == 30000 {
				return true
			}
		}
		return false
	})
	start := time.Now()
	if _, err := SubscribeJSON[any](bg, c, "t.b", nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the second subscription waited %v", took)
	}
	found := false
	for _, p := range f.pollsSeen() {
		if len(p.Topics) == 2 {
			found = true
		}
	}
	if !found {
		t.Fatal("no poll with both topics")
	}
}

func TestTheStartUpFallsBackToAnOlderVersion(t *testing.T) {
	f := newFake(t)
	good := []byte(`{"good": 1}`)
	f.files["/api/v1/topics/t.a/versions/1/data"] = good
	f.other["/api/v1/topics/t.a/versions?limit=30"] = obj{"versions": []obj{
		{"version": 4, "size": 6, "sha256": shaHex([]byte("broken")), "scopes": []obj{{"selector": obj{}}}},
		{"version": 3, "size": 1, "sha256": "x", "purged": true, "scopes": []obj{{"selector": obj{}}}},
		{"version": 2, "size": 1, "sha256": "y", "scopes": []obj{{"selector": obj{"region": "us"}}}},
		{"version": 1, "size": len(good), "sha256": shaHex(good), "content_type": "application/json", "scopes": []obj{{"selector": obj{"region": "eu"}}}},
	}}
	f.setPoll(func(p gotPoll) reply {
		return answer(obj{"t.a": upd{version: 4, data: []byte("broken"), inline: true}.json()}, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), Labels: map[string]string{"region": "eu"}, StartupFallback: 5, RecheckRejected: 200 * time.Millisecond})
	sub, err := SubscribeJSON(bg, c, "t.a", map[string]int{})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := sub.Version(); sub.Get()["good"] != 1 || v != 1 || sub.Source() != SourceServer {
		t.Fatalf("fallback: %v v%d %s", sub.Get(), v, sub.Source())
	}
	if f.countPath("/api/v1/topics/t.a/versions/2/data")+f.countPath("/api/v1/topics/t.a/versions/3/data") != 0 {
		t.Fatal("purged and out-of-scope versions are not tried")
	}
	eventually(t, "the failure of v4 reported", 5*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if r, ok := p.Applied["t.a"]; ok && r.Version == 4 && !r.OK {
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond)
	if n := f.countPath("/api/v1/topics/t.a/versions?limit=30"); n != 1 {
		t.Fatalf("the fallback is a start-up rule: listed %d times", n)
	}
}

func TestTheTokenGoesOnlyToTheConfiguredServers(t *testing.T) {
	var other atomic.Value
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		other.Store(r.Header.Get("Authorization") + "|")
		_, _ = w.Write([]byte(`"elsewhere"`))
	}))
	defer elsewhere.Close()
	f := newFake(t)
	j := upd{version: 1, data: []byte(`"elsewhere"`)}.json()
	j["data_url"] = elsewhere.URL + "/presigned/object"
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["t.a"] == nil {
			return answer(obj{"t.a": j}, nil, 0)
		}
		return answer(nil, nil, 0)
	})
	c := newClient(t, Options{URL: f.url(), Token: "secret"})
	sub, _ := SubscribeJSON(bg, c, "t.a", "")
	if sub.Get() != "elsewhere" {
		t.Fatalf("value %q", sub.Get())
	}
	if got, _ := other.Load().(string); got != "|" {
		t.Fatalf("the other host got Authorization %q", got)
	}
}

func TestFallbackURLsAreTriedWhenThePollFails(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(p gotPoll) reply {
		return answer(obj{"t.a": upd{version: 1, data: []byte("1"), inline: true}.json()}, nil, 0)
	})
	c := newClient(t, Options{URL: deadURL(t), FallbackURLs: []string{f.url()}, MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 20 * time.Millisecond, InitialWait: -1})
	sub, _ := SubscribeJSON(bg, c, "t.a", 0)
	eventually(t, "the value from the second server", 5*time.Second, func() bool { return sub.Get() == 1 })
}

func TestMissingTopicsKeepTheirValueAndNextWaitsForAChange(t *testing.T) {
	f := newFake(t)
	of := &offer{u: upd{version: 1, data: []byte("1"), inline: true}}
	var missing atomic.Bool
	f.setPoll(func(p gotPoll) reply {
		if missing.Load() {
			return answer(nil, obj2("t.a", "no_version_in_scope"), 0)
		}
		return of.poll("t.a")(p)
	})
	c := newClient(t, Options{URL: f.url(), LongPoll: 100 * time.Millisecond})
	sub, _ := SubscribeJSON(bg, c, "t.a", 0)
	if sub.Get() != 1 {
		t.Fatal("first value")
	}
	missing.Store(true)
	time.Sleep(300 * time.Millisecond)
	if sub.Get() != 1 {
		t.Fatal("a topic with nothing to give keeps its value")
	}
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	if _, err := sub.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next without a change: %v", err)
	}
	got := make(chan int, 1)
	go func() {
		v, err := sub.Next(bg)
		if err == nil {
			got <- v
		}
	}()
	time.Sleep(50 * time.Millisecond)
	of.set(upd{version: 2, data: []byte("2"), inline: true})
	missing.Store(false)
	select {
	case v := <-got:
		if v != 2 {
			t.Fatalf("Next: %d", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next did not return")
	}
}

func TestCloseSendsPendingReportsAndGetKeepsWorking(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(p gotPoll) reply {
		if p.Topics["t.a"] == nil {
			return answer(obj{"t.a": upd{version: 1, data: []byte("[1]"), inline: true}.json()}, nil, 60_000)
		}
		return answer(nil, nil, 60_000)
	})
	c, err := New(Options{URL: f.url(), LongPoll: -1, Logger: quiet(t)})
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := SubscribeJSON(bg, c, "t.a", []int{})
	changes := sub.Changes()
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Close took %v", took)
	}
	if len(sub.Get()) != 1 || sub.Get()[0] != 1 {
		t.Fatal("the value stays after Close")
	}
	sent := false
	for _, p := range f.pollsSeen() {
		if r, ok := p.Applied["t.a"]; ok && r == (report{Version: 1, OK: true}) {
			sent = true
		}
	}
	if !sent {
		t.Fatal("the pending report is sent at Close")
	}
	if _, ok := <-changes; ok {
		t.Fatal("the changes channel is closed")
	}
	if _, err := sub.Next(bg); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	if _, err := SubscribeJSON[any](bg, c, "t.b", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("subscribe after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal("Close twice")
	}
}

func TestCloseAbortsAnOpenLongPoll(t *testing.T) {
	f := newFake(t)
	hold := make(chan struct{})
	defer close(hold)
	f.setPoll(func(p gotPoll) reply {
		if p.WaitMs > 0 {
			select {
			case <-hold:
			case <-time.After(20 * time.Second):
			}
		}
		return answer(nil, nil, 0)
	})
	c, _ := New(Options{URL: f.url(), Logger: quiet(t)})
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a long poll", 5*time.Second, func() bool {
		for _, p := range f.pollsSeen() {
			if p.WaitMs > 0 {
				return true
			}
		}
		return false
	})
	start := time.Now()
	c.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Close waited for the long poll: %v", took)
	}
}

func TestWithoutACacheDirFilesGoToATemporaryDirectoryRemovedByClose(t *testing.T) {
	f := newFake(t)
	of := &offer{}
	for v := uint64(1); v <= 3; v++ {
		data := []byte(fmt.Sprintf("version %d, big enough", v))
		f.files[fmt.Sprintf("/api/v1/topics/t.a/versions/%d/data", v)] = data
		if v == 1 {
			of.set(upd{version: 1, data: data})
		}
	}
	f.setPoll(of.poll("t.a"))
	c, _ := New(Options{URL: f.url(), Logger: quiet(t), LongPoll: 100 * time.Millisecond})
	sub, _ := c.SubscribeFilePath(bg, "t.a")
	path := sub.Get()
	if b, err := os.ReadFile(path); err != nil || string(b) != "version 1, big enough" {
		t.Fatalf("file %q: %v", path, err)
	}
	for v := uint64(2); v <= 3; v++ {
		of.set(upd{version: v, data: f.files[fmt.Sprintf("/api/v1/topics/t.a/versions/%d/data", v)]})
		eventually(t, "the next version", 10*time.Second, func() bool { got, _ := sub.Version(); return got == v })
	}
	bins, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*.bin"))
	if len(bins) != 2 {
		t.Fatalf("the current and the previous file are kept, older ones go: %v", bins)
	}
	if b, err := os.ReadFile(sub.Get()); err != nil || string(b) != "version 3, big enough" {
		t.Fatalf("current file: %v", err)
	}
	c.Close()
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Fatal("the temporary directory stays after Close")
	}
	c2 := newClient(t, Options{URL: deadURL(t)})
	sub2, _ := c2.SubscribeFilePath(bg, "t.a")
	if sub2.Source() != SourceDefault {
		t.Fatal("without a cache directory nothing is read back")
	}
}

func TestSubscribeWaitsAtMostInitialWaitOrItsContext(t *testing.T) {
	f := newFake(t)
	f.setPoll(func(gotPoll) reply { time.Sleep(3 * time.Second); return answer(nil, nil, 0) })
	c := newClient(t, Options{URL: f.url(), InitialWait: 300 * time.Millisecond})
	start := time.Now()
	if _, err := SubscribeJSON[any](bg, c, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 250*time.Millisecond || took > 2*time.Second {
		t.Fatalf("waited %v, InitialWait 300 ms", took)
	}
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	c2 := newClient(t, Options{URL: f.url()})
	start = time.Now()
	if _, err := SubscribeJSON[any](ctx, c2, "t.a", nil); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("the context did not bound the wait: %v", took)
	}
}

func TestAPIErrorsAreReadFromTheEnvelopeAndReportsAreBounded(t *testing.T) {
	e := apiError(401, http.Header{}, []byte(`{"error":{"code":"unauthorized","message":"unknown token"}}`))
	if e.Error() != "imprint: unknown token (unauthorized, HTTP 401)" || e.Code != "unauthorized" || e.Transient() {
		t.Fatalf("401: %v", e)
	}
	e = apiError(502, http.Header{"Retry-After": {"7"}}, []byte("<html>bad gateway</html>"))
	if e.Code != "http_error" || !e.Transient() || !strings.Contains(e.Message, "Bad Gateway") || e.RetryAfter != 7*time.Second {
		t.Fatalf("502: %+v", e)
	}
	for _, status := range []int{408, 429, 503} {
		if !apiError(status, http.Header{}, nil).Transient() {
			t.Errorf("%d is transient", status)
		}
	}
	if parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT") != 0 || parseRetryAfter(" 2 ") != 2*time.Second {
		t.Error("Retry-After: delta-seconds only")
	}
	long := strings.Repeat("é", 800) // 1600 bytes
	cut := truncate(long, errorMax)
	if len(cut) > errorMax || !strings.HasPrefix(long, cut) || !utf8Valid(cut) {
		t.Fatalf("truncated to %d bytes", len(cut))
	}
}

func utf8Valid(s string) bool { return strings.ToValidUTF8(s, "?") == s }
