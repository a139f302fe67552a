package imprint

// The client against a real Imprint server: the binary, on a fresh database of the
// running Postgres, with its own home and object store (as clients/python/tests/conftest.py
// starts it).
//
//	IMPRINT_SERVER_BIN   the server binary (default /work/bin/imprint-server, else
//	                     <repo>/target/debug/imprint-server)
//	IMPRINT_TEST_PG_URL  an admin connection URL of Postgres (default DATABASE_URL, else
//	                     postgres://postgres@127.0.0.1:54329/postgres)
//	IMPRINT_TEST_PSQL    psql, to create and drop the test's database (default psql)
//
// Without a binary or a reachable Postgres these tests are skipped, saying why; with
// CI=true they fail instead.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type realServer struct {
	url   string
	home  string
	admin string
	token string
	proc  *exec.Cmd
	done  chan struct{} // closed when the server process has exited
	db    string
	psql  string
	pgURL string
	log   string
}

var (
	serverOnce sync.Once
	theServer  *realServer
	serverWhy  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theServer != nil {
		theServer.stop()
	}
	os.Exit(code)
}

func withDB(raw, db string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Path = "/" + db
	return u.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func hexToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// server starts the real server once for the package (or skips the test saying why).
func server(t *testing.T) *realServer {
	t.Helper()
	serverOnce.Do(func() { theServer, serverWhy = startServer() })
	if theServer == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the real-server tests cannot run (CI=true): %s", serverWhy)
		}
		t.Skipf("skipped: %s", serverWhy)
	}
	return theServer
}

func startServer() (*realServer, string) {
	bin := os.Getenv("IMPRINT_SERVER_BIN")
	if bin == "" {
		bin = "/work/bin/imprint-server"
		if _, err := os.Stat(bin); err != nil {
			repo, _ := filepath.Abs("../..")
			bin = filepath.Join(repo, "target/debug/imprint-server")
		}
	}
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return nil, fmt.Sprintf("no server binary at %s (build it with `cargo build -p imprint-server` or set IMPRINT_SERVER_BIN)", bin)
	}
	admin := os.Getenv("IMPRINT_TEST_PG_URL")
	if admin == "" {
		admin = os.Getenv("DATABASE_URL")
	}
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:54329/postgres"
	}
	psql := os.Getenv("IMPRINT_TEST_PSQL")
	if psql == "" {
		psql = "psql"
	}
	if _, err := exec.LookPath(psql); err != nil {
		return nil, fmt.Sprintf("%s not found (set IMPRINT_TEST_PSQL): %v", psql, err)
	}
	db := "imprint_goclient_" + hexToken(4)
	adminDB := withDB(admin, "postgres")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", adminDB, "-c", "CREATE DATABASE "+db).CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("Postgres at %s is not usable (set IMPRINT_TEST_PG_URL; `eval \"$(./dev pg-start)\"`): %v: %s", admin, err, strings.TrimSpace(string(out)))
	}
	home, err := os.MkdirTemp("", "imprint-goclient-")
	if err != nil {
		return nil, err.Error()
	}
	port, err := freePort()
	if err != nil {
		return nil, err.Error()
	}
	s := &realServer{
		url: fmt.Sprintf("http://127.0.0.1:%d", port), home: home, admin: "go-client-admin-token-" + hexToken(8),
		db: db, psql: psql, pgURL: adminDB, log: filepath.Join(home, "server.log"),
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IMPRINT_") && !strings.HasPrefix(kv, "LEPTOS_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"DATABASE_URL="+withDB(admin, db),
		fmt.Sprintf("IMPRINT_ADDR=127.0.0.1:%d", port),
		fmt.Sprintf("LEPTOS_SITE_ADDR=127.0.0.1:%d", port),
		"IMPRINT_HOME="+home,
		"IMPRINT_BOOTSTRAP_TOKEN="+s.admin,
		"IMPRINT_ADMIN_PASSWORD=go-client-"+hexToken(8),
		"IMPRINT_SNAPSHOT_SECS=1",
		"IMPRINT_ROLLOUT_TICK_MS=200",
	)
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err.Error()
	}
	cmd := exec.Command(bin, "serve")
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = home, env, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.dropDB()
		return nil, fmt.Sprintf("starting %s: %v", bin, err)
	}
	s.proc = cmd
	exited := make(chan struct{})
	s.done = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(120 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(s.url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s, ""
			}
		}
		select {
		case <-exited:
			text, _ := os.ReadFile(s.log)
			s.dropDB()
			return nil, fmt.Sprintf("the server exited at start; its log:\n%s", tail(string(text), 4000))
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return nil, "the server did not answer /healthz within 120 s"
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (s *realServer) dropDB() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, s.psql, "-X", "-q", s.pgURL, "-c", "DROP DATABASE IF EXISTS "+s.db+" WITH (FORCE)").Run()
}

func (s *realServer) stop() {
	if s.proc != nil && s.proc.Process != nil {
		_ = s.proc.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			_ = s.proc.Process.Kill()
			<-s.done
		}
	}
	s.dropDB()
	_ = os.RemoveAll(s.home)
}

func (s *realServer) api(t *testing.T, method, path string, body any, raw []byte, contentType string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if raw != nil {
		rd = bytes.NewReader(raw)
	} else if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
		contentType = "application/json"
	}
	req, _ := http.NewRequest(method, s.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+s.admin)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func (s *realServer) ok(t *testing.T, method, path string, body any) map[string]any {
	t.Helper()
	status, data := s.api(t, method, path, body, nil, "")
	if status < 200 || status > 299 {
		t.Fatalf("%s %s: %d %s", method, path, status, data)
	}
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return out
}

func (s *realServer) topic(t *testing.T, prefix string) string {
	name := prefix + "." + hexToken(4)
	s.ok(t, "POST", "/api/v1/topics", map[string]any{"name": name})
	return name
}

func (s *realServer) publish(t *testing.T, topic string, data string, scopes ...map[string]string) uint64 {
	t.Helper()
	body := map[string]any{"data": data}
	if scopes != nil {
		body["scopes"] = scopes
	}
	return uint64(s.ok(t, "POST", "/api/v1/topics/"+topic+"/versions", body)["version"].(float64))
}

func (s *realServer) publishRaw(t *testing.T, topic string, data []byte) uint64 {
	t.Helper()
	status, out := s.api(t, "POST", "/api/v1/topics/"+topic+"/versions", nil, data, "application/octet-stream")
	if status != 201 {
		t.Fatalf("publish raw: %d %s", status, out)
	}
	var v struct{ Version uint64 }
	_ = json.Unmarshal(out, &v)
	return v.Version
}

func (s *realServer) consumer(t *testing.T, topic, instance string) map[string]any {
	out := s.ok(t, "GET", "/api/v1/topics/"+topic+"/consumers", nil)
	list, _ := out["consumers"].([]any)
	for _, c := range list {
		if m, ok := c.(map[string]any); ok && m["instance"] == instance {
			return m
		}
	}
	return nil
}

func realClient(t *testing.T, o Options) *Client {
	if o.Instance == "" {
		o.Instance = "go-" + hexToken(4)
	}
	return newClient(t, o)
}

func TestRealFirstValueThenUpdatesReachTheListenerAndTheChannel(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, `{"n": 1}`)
	c := realClient(t, Options{URL: s.url})
	sub, err := SubscribeJSON(bg, c, topic, map[string]int{})
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := sub.Version(); sub.Get()["n"] != 1 || v != 1 || sub.Source() != SourceServer {
		t.Fatalf("first value %v v%d %s", sub.Get(), v, sub.Source())
	}
	heard := make(chan int, 4)
	sub.OnChange(func(v map[string]int) { heard <- v["n"] })
	ch := sub.Changes()
	s.publish(t, topic, `{"n": 2}`)
	select {
	case v := <-ch:
		if v["n"] != 2 {
			t.Fatalf("changes: %v", v)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no change within 20 s")
	}
	if v := <-heard; v != 2 {
		t.Fatalf("listener: %d", v)
	}
	name := c.Instance()
	eventually(t, "the consumer audit", 20*time.Second, func() bool {
		r := s.consumer(t, topic, name)
		return r != nil && r["version"] == 2.0
	})
}

func TestRealTheDefaultWhileTheTopicIsMissingThenItsFirstVersion(t *testing.T) {
	s := server(t)
	c := realClient(t, Options{URL: s.url, LongPoll: time.Second})
	missing, err := SubscribeJSON(bg, c, "t.not-yet-"+hexToken(3), "default")
	if err != nil {
		t.Fatal(err)
	}
	if missing.Get() != "default" || missing.Source() != SourceDefault {
		t.Fatal("the default")
	}
	topic := s.topic(t, "t")
	later, _ := SubscribeJSON(bg, c, topic, []int{})
	if len(later.Get()) != 0 {
		t.Fatal("the default while nothing is published")
	}
	s.publish(t, topic, "[1]")
	eventually(t, "the first version", 20*time.Second, func() bool { return len(later.Get()) == 1 })
}

func TestRealPinMovesBackAndUnpinMovesForward(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, "v1")
	s.publish(t, topic, "v2")
	c := realClient(t, Options{URL: s.url})
	sub, _ := c.SubscribeBytes(bg, topic, nil)
	if string(sub.Get()) != "v2" {
		t.Fatalf("newest: %q", sub.Get())
	}
	s.ok(t, "PUT", "/api/v1/topics/"+topic+"/pins", map[string]any{"selector": map[string]string{}, "version": 1})
	eventually(t, "the pin", 20*time.Second, func() bool { v, _ := sub.Version(); return v == 1 })
	if cur := sub.Current(); string(cur.Value) != "v1" || !cur.Pinned {
		t.Fatalf("pinned: %+v", cur)
	}
	if status, body := s.api(t, "DELETE", "/api/v1/topics/"+topic+"/pins?selector=", nil, nil, ""); status != 204 {
		t.Fatalf("unpin: %d %s", status, body)
	}
	eventually(t, "the unpin", 20*time.Second, func() bool { v, _ := sub.Version(); return v == 2 })
}

func TestRealAScopedReleaseReachesOnlyMatchingLabels(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, "all")
	s.publish(t, topic, "eu only", map[string]string{"region": "eu"})
	eu := realClient(t, Options{URL: s.url, Labels: map[string]string{"region": "eu"}})
	us := realClient(t, Options{URL: s.url, Labels: map[string]string{"region": "us"}})
	a, _ := eu.SubscribeBytes(bg, topic, nil)
	b, _ := us.SubscribeBytes(bg, topic, nil)
	if string(a.Get()) != "eu only" || string(b.Get()) != "all" {
		t.Fatalf("eu %q, us %q", a.Get(), b.Get())
	}
}

func TestRealABadVersionKeepsTheOldValueAndIsReportedFailed(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, `{"ok": 1}`)
	c := realClient(t, Options{URL: s.url, RecheckRejected: 500 * time.Millisecond})
	sub, _ := SubscribeJSON(bg, c, topic, map[string]int{})
	s.publish(t, topic, "{not json")
	name := c.Instance()
	var row map[string]any
	eventually(t, "the failure in the consumer audit", 20*time.Second, func() bool {
		row = s.consumer(t, topic, name)
		return row != nil && row["last_applied_ok"] == false
	})
	if row["last_applied_version"] != 2.0 || !strings.Contains(fmt.Sprint(row["last_error"]), "decode failed") || row["version"] != 1.0 {
		t.Fatalf("audit row: %v", row)
	}
	if sub.Get()["ok"] != 1 {
		t.Fatal("the old value stays")
	}
	s.publish(t, topic, `{"ok": 3}`) // the fix is picked up by the re-check
	eventually(t, "the fix", 20*time.Second, func() bool { v, _ := sub.Version(); return v == 3 })
	eventually(t, "the success in the audit", 20*time.Second, func() bool {
		row = s.consumer(t, topic, name)
		return row != nil && row["last_applied_ok"] == true && row["version"] == 3.0
	})
}

func TestRealTheStartUpFallsBackToAnOlderVersion(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, `{"good": 1}`)
	s.publish(t, topic, "broken")
	c := realClient(t, Options{URL: s.url})
	sub, _ := SubscribeJSON(bg, c, topic, map[string]int{})
	if v, _ := sub.Version(); sub.Get()["good"] != 1 || v != 1 || sub.Source() != SourceServer {
		t.Fatalf("fallback: %v v%d %s", sub.Get(), v, sub.Source())
	}
}

func TestRealLargePayloadsStreamToAFileAndTheCacheOutlivesTheServer(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "m")
	data := make([]byte, 3<<20) // beyond the inline limit: downloaded from data_url
	_, _ = rand.Read(data)
	s.publishRaw(t, topic, data)
	dir := t.TempDir()
	c := realClient(t, Options{URL: s.url, CacheDir: dir})
	sub, err := c.SubscribeFilePath(bg, topic)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(sub.Get())
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file %q: %v", sub.Get(), err)
	}
	c.Close()
	c2 := realClient(t, Options{URL: deadURL(t), CacheDir: dir})
	sub2, _ := SubscribeFile(bg, c2, topic, []byte(nil), func(p Payload) ([]byte, error) { return os.ReadFile(p.Path) })
	if sub2.Source() != SourceCache || !bytes.Equal(sub2.Get(), data) {
		t.Fatalf("from the cache: %s", sub2.Source())
	}
}

func TestRealItsOwnSnapshotWhenItIsUnreachable(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, `{"from": "snapshot"}`)
	objects := filepath.Join(s.home, "objects")
	manifestPath := filepath.Join(objects, "snapshots", topic+".json")
	eventually(t, "the snapshot written by the server's worker", 30*time.Second, func() bool {
		raw, err := os.ReadFile(manifestPath)
		var m struct{ Version uint64 }
		return err == nil && json.Unmarshal(raw, &m) == nil && m.Version == 1
	})
	c := realClient(t, Options{URL: deadURL(t), SnapshotStore: (&url.URL{Scheme: "file", Path: objects}).String()})
	sub, _ := SubscribeJSON(bg, c, topic, map[string]string{})
	if v, _ := sub.Version(); sub.Get()["from"] != "snapshot" || sub.Source() != SourceSnapshot || v != 1 {
		t.Fatalf("snapshot: %v %s v%d", sub.Get(), sub.Source(), v)
	}
}

func TestRealATokenIsSentAndAnUnknownOneRefused(t *testing.T) {
	s := server(t)
	topic := s.topic(t, "t")
	s.publish(t, topic, `"tokened"`)
	c := realClient(t, Options{URL: s.url, Token: s.admin})
	sub, _ := SubscribeJSON(bg, c, topic, "")
	if sub.Get() != "tokened" {
		t.Fatalf("with a token the server issued: %q", sub.Get())
	}
	bad := realClient(t, Options{URL: s.url, Token: "never-issued", MaxBackoff: 100 * time.Millisecond})
	sub2, _ := SubscribeJSON(bg, bad, topic, "default")
	if sub2.Get() != "default" || sub2.Source() != SourceDefault {
		t.Fatal("an unknown token gets nothing")
	}
	eventually(t, "the refusal counted", 10*time.Second, func() bool {
		return bad.Metrics().Get(MetricPollErrors, "kind", "client") >= 1
	})
}
