package imprint

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
)

// The fixtures were made by the Rust implementation (seal/examples/sealed_fixtures.rs):
// keyring.json (key "orders", versions 1 and 2), inline.json (sealed under orders v1),
// object.json + object.sealed (150 000 bytes in three chunks, under orders v2).
const sealedFixtures = "../testdata/sealed"

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sealedFixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sealedStore writes files (key -> bytes) into a fresh file:// store.
func sealedStore(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for key, b := range files {
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return (&url.URL{Scheme: "file", Path: dir}).String()
}

// objectStore is a store holding the object fixture's manifest and the given sealed object.
func objectStore(t *testing.T, sealed []byte) string {
	return sealedStore(t, map[string][]byte{
		"snapshots/orders.object.json": fixture(t, "object.json"),
		"object.sealed":                sealed,
	})
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) log(_ Level, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, msg)
}

func (l *logLines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func rawPayload(p Payload) (Payload, error) { return p, nil }

// snapshotOf subscribes to topic on a client whose server is down and returns what it
// started from.
func snapshotOf(t *testing.T, store, keyring, topic string) (Payload, Source, *logLines) {
	t.Helper()
	logs := &logLines{}
	c := newClient(t, Options{URL: deadURL(t), SnapshotStore: store, SnapshotKeyring: keyring, Logger: logs.log})
	sub, err := Subscribe(bg, c, topic, Payload{Topic: "default"}, rawPayload)
	if err != nil {
		t.Fatal(err)
	}
	return sub.Get(), sub.Source(), logs
}

// otherKeyring is a keyring of the same shape (key "orders", versions 1 and 2) with other
// key-encryption keys.
func otherKeyring(t *testing.T) string {
	t.Helper()
	kek := func() string {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	p := filepath.Join(t.TempDir(), "keyring.json")
	ring := fmt.Sprintf(`{"format": 1, "keys": {"orders": {"primary": 2, "versions": {"1": %q, "2": %q}}}}`, kek(), kek())
	if err := os.WriteFile(p, []byte(ring), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func ringPath() string { return filepath.Join(sealedFixtures, "keyring.json") }

func TestASealedInlineSnapshotOpensWithTheKeyring(t *testing.T) {
	store := sealedStore(t, map[string][]byte{"snapshots/orders.inline.json": fixture(t, "inline.json")})
	p, src, logs := snapshotOf(t, store, ringPath(), "orders.inline")
	want := `{"password": "hunter2", "rates": [1, 2, 3]}`
	if src != SourceSnapshot || string(p.Data) != want {
		t.Fatalf("sealed inline snapshot: %s %q\n%s", src, p.Data, logs)
	}
	sum := sha256.Sum256([]byte(want))
	if p.Version != 3 || p.ContentType != "application/json" || p.Metadata["team"] != "payments" || p.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the sealed manifest's fields: %+v", p)
	}
	// The plaintext is nowhere in the store's file.
	if bytes.Contains(fixture(t, "inline.json"), []byte("hunter2")) {
		t.Fatal("the fixture is not sealed")
	}
}

func TestASealedObjectSnapshotOpensAsItStreams(t *testing.T) {
	plain := fixture(t, "object.plain")
	store := objectStore(t, fixture(t, "object.sealed"))
	p, src, logs := snapshotOf(t, store, ringPath(), "orders.object")
	if src != SourceSnapshot || !bytes.Equal(p.Data, plain) || p.Version != 7 {
		t.Fatalf("sealed object snapshot: %s v%d, %d bytes\n%s", src, p.Version, len(p.Data), logs)
	}
	sum := sha256.Sum256(plain)
	if p.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 %s", p.SHA256)
	}
	// SubscribeFile: the plaintext goes into the payload file.
	c := newClient(t, Options{URL: deadURL(t), SnapshotStore: store, SnapshotKeyring: ringPath(), CacheDir: t.TempDir()})
	sub, err := SubscribeFile(bg, c, "orders.object", []byte(nil), func(p Payload) ([]byte, error) { return os.ReadFile(p.Path) })
	if err != nil {
		t.Fatal(err)
	}
	if sub.Source() != SourceSnapshot || !bytes.Equal(sub.Get(), plain) {
		t.Fatalf("file snapshot: %s %d bytes", sub.Source(), len(sub.Get()))
	}
}

func TestASealedSnapshotIsNotUsedWithoutItsKey(t *testing.T) {
	inline := sealedStore(t, map[string][]byte{"snapshots/orders.inline.json": fixture(t, "inline.json")})
	object := objectStore(t, fixture(t, "object.sealed"))
	cases := []struct {
		name, store, topic, keyring, says string
	}{
		{"inline, no keyring", inline, "orders.inline", "", `sealed at rest under key "orders"`},
		{"object, no keyring", object, "orders.object", "", `sealed at rest under key "orders"`},
		{"inline, another keyring", inline, "orders.inline", otherKeyring(t), "does not unwrap with key \"orders\" version 1"},
		{"object, another keyring", object, "orders.object", otherKeyring(t), "does not unwrap with key \"orders\" version 2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, src, logs := snapshotOf(t, tc.store, tc.keyring, tc.topic)
			if src != SourceDefault || p.Topic != "default" {
				t.Fatalf("used: %s %+v", src, p)
			}
			if !logs.has(tc.says) {
				t.Fatalf("want a log saying %q:\n%s", tc.says, logs)
			}
		})
	}
}

// The sealed object's header is 91 bytes (150 139 - 150 000 - 3 tags), then three chunks.
func sealedHeaderLen(t *testing.T, sealed []byte) int {
	t.Helper()
	if _, err := readSealHeader(bytes.NewReader(sealed)); err != nil {
		t.Fatal(err)
	}
	n := len(sealed) - 150000 - 3*sealTag
	if n != 91 {
		t.Fatalf("header of %d bytes", n)
	}
	return n
}

func TestAnAlteredTruncatedOrUnknownSealedObjectIsNotUsed(t *testing.T) {
	sealed := fixture(t, "object.sealed")
	at := sealedHeaderLen(t, sealed)
	full := sealChunk + sealTag
	altered := func(offset int) []byte {
		b := append([]byte(nil), sealed...)
		b[offset] ^= 0x01
		return b
	}
	withVersion := func(v uint32) []byte {
		b := append([]byte(nil), sealed...)
		binary.BigEndian.PutUint32(b[len(sealMagic)+1+1+len("orders"):], v)
		return b
	}
	cases := []struct {
		name   string
		sealed []byte
		says   string
	}{
		{"a flipped byte in chunk 0", altered(at + 5), "failed authentication at chunk 0"},
		{"a flipped byte in chunk 1", altered(at + full + 100), "failed authentication at chunk 1"},
		{"a flipped byte in chunk 2", altered(len(sealed) - 1), "failed authentication at chunk 2"},
		{"the last chunk dropped", sealed[:at+2*full], "failed authentication at chunk 1"},
		{"cut inside the header", sealed[:40], "ends inside its header"},
		{"a header naming version 3", withVersion(3), `key "orders" of the keyring`},
		{"a header naming a KMS key", withVersion(0), "KMS"},
		{"a flipped byte in the wrapped key", altered(20), "does not unwrap"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, src, logs := snapshotOf(t, objectStore(t, tc.sealed), ringPath(), "orders.object")
			if src != SourceDefault || p.Topic != "default" || p.Data != nil {
				t.Fatalf("used: %s v%d, %d bytes", src, p.Version, len(p.Data))
			}
			if !logs.has(tc.says) || !logs.has("not usable") {
				t.Fatalf("want a log saying %q:\n%s", tc.says, logs)
			}
		})
	}
}

func TestASealedManifestWithAnUnknownKeyVersionIsNotUsed(t *testing.T) {
	var m struct {
		Format int    `json:"format"`
		Topic  string `json:"topic"`
		Key    string `json:"key"`
		Sealed string `json:"sealed"`
	}
	if err := json.Unmarshal(fixture(t, "inline.json"), &m); err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(m.Sealed)
	binary.BigEndian.PutUint32(raw[14:], 3)
	file := fmt.Sprintf(`{"format": 1, "topic": "orders.inline", "key": "orders", "sealed": %q}`, base64.StdEncoding.EncodeToString(raw))
	store := sealedStore(t, map[string][]byte{"snapshots/orders.inline.json": []byte(file)})
	_, src, logs := snapshotOf(t, store, ringPath(), "orders.inline")
	if src != SourceDefault || !logs.has("has no version 3") || !logs.has("cannot read the snapshot of orders.inline") {
		t.Fatalf("used: %s\n%s", src, logs)
	}
}

func TestTheSealedReaderOpensInAnyPiecesAndStopsAtTheFirstBadChunk(t *testing.T) {
	ring, err := loadKeyring(ringPath())
	if err != nil {
		t.Fatal(err)
	}
	sealed := fixture(t, "object.sealed")
	r, err := openSealed(ring, iotest.HalfReader(iotest.OneByteReader(bytes.NewReader(sealed))))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(iotest.OneByteReader(r))
	if err != nil || !bytes.Equal(got, fixture(t, "object.plain")) {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	// An altered second chunk: the first chunk's plaintext comes out, then the error, and
	// nothing of the altered chunk.
	bad := append([]byte(nil), sealed...)
	bad[91+sealChunk+sealTag+7] ^= 0x80
	r, err = openSealed(ring, bytes.NewReader(bad))
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(r)
	if err == nil || !strings.Contains(err.Error(), "chunk 1") || len(got) != sealChunk {
		t.Fatalf("%d bytes, %v", len(got), err)
	}
	if _, err := r.Read(make([]byte, 10)); err == nil || errors.Is(err, io.EOF) {
		t.Fatalf("after a failure: %v", err)
	}
}

func TestTheSnapshotKeyringIsCheckedWhenTheClientIsBuilt(t *testing.T) {
	store := sealedStore(t, nil)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := map[string]string{
		"not-json.json":  `{"format": 1, "keys": `,
		"format.json":    `{"format": 2, "keys": {}}`,
		"unknown.json":   `{"format": 1, "keys": {}, "extra": 1}`,
		"short-kek.json": `{"format": 1, "keys": {"orders": {"primary": 1, "versions": {"1": "AAAA"}}}}`,
		"primary.json":   fmt.Sprintf(`{"format": 1, "keys": {"orders": {"primary": 2, "versions": {"1": %q}}}}`, base64.StdEncoding.EncodeToString(make([]byte, 32))),
		"version.json":   fmt.Sprintf(`{"format": 1, "keys": {"orders": {"primary": 1, "versions": {"one": %q}}}}`, base64.StdEncoding.EncodeToString(make([]byte, 32))),
	}
	for name, text := range bad {
		p := write(name, text)
		_, err := New(Options{URL: "http://a:1", SnapshotStore: store, SnapshotKeyring: p})
		var ce *ConfigError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: want a ConfigError naming the file, got %v", name, err)
		}
	}
	missing := filepath.Join(dir, "missing.json")
	if _, err := New(Options{URL: "http://a:1", SnapshotStore: store, SnapshotKeyring: missing}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("a missing keyring: %v", err)
	}
	var ce *ConfigError
	if _, err := New(Options{URL: "http://a:1", SnapshotKeyring: ringPath()}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "SnapshotStore") {
		t.Errorf("a keyring without a store: %v", err)
	}
	c, err := New(Options{URL: "http://a:1", SnapshotStore: store, SnapshotKeyring: ringPath()})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	if s := (Options{SnapshotKeyring: "/etc/imprint/ring.json"}).String(); !strings.Contains(s, `SnapshotKeyring: "/etc/imprint/ring.json"`) {
		t.Errorf("String: %s", s)
	}
}

func TestASealedObjectOpensFromAnHTTPSStore(t *testing.T) {
	dir := t.TempDir()
	for key, name := range map[string]string{"snapshots/orders.object.json": "object.json", "object.sealed": "object.sealed"} {
		p := filepath.Join(dir, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, fixture(t, name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	store := httptest.NewTLSServer(http.StripPrefix("/bucket/", http.FileServer(http.Dir(dir))))
	defer store.Close()
	logs := &logLines{}
	c := newClient(t, Options{URL: deadURL(t), SnapshotStore: store.URL + "/bucket", SnapshotKeyring: ringPath(),
		HTTPClient: store.Client(), Logger: logs.log})
	c.snaps.http = store.Client()
	sub, err := Subscribe(bg, c, "orders.object", Payload{}, rawPayload)
	if err != nil {
		t.Fatal(err)
	}
	if sub.Source() != SourceSnapshot || !bytes.Equal(sub.Get().Data, fixture(t, "object.plain")) {
		t.Fatalf("over https: %s, %d bytes\n%s", sub.Source(), len(sub.Get().Data), logs)
	}
}
