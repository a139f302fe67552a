package imprint

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ageTools: Debian's age and age-keygen (./dev installs the `age` package). Under CI their
// absence fails the test; elsewhere it is skipped.
func ageTools(t *testing.T) {
	for _, tool := range []string{"age", "age-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is missing (apt-get install -y age)", tool)
			}
			t.Skipf("%s is missing (apt-get install -y age)", tool)
		}
	}
}

func ageEncrypt(t *testing.T, recipient string, plain []byte) []byte {
	t.Helper()
	cmd := exec.Command("age", "--encrypt", "--recipient", recipient)
	cmd.Stdin = bytes.NewReader(plain)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("age --encrypt: %v", err)
	}
	return out
}

// An end-to-end encrypted topic (docs/encryption.md) through the Decrypt hook with the
// `age` binary: the value decrypts, the cache holds ciphertext; without the hook, or
// with a tampered chunk, the version is rejected and the error reaches the server.
func TestRealAnEncryptedTopicDecryptsThroughTheHook(t *testing.T) {
	ageTools(t)
	s := server(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "key.txt")
	if out, err := exec.Command("age-keygen", "-o", key).CombinedOutput(); err != nil {
		t.Fatalf("age-keygen: %v %s", err, out)
	}
	pub, err := exec.Command("age-keygen", "-y", key).Output()
	if err != nil {
		t.Fatal(err)
	}
	recipient := strings.TrimSpace(string(pub))
	topic := "e2e." + hexToken(4)
	s.ok(t, "POST", "/api/v1/topics", map[string]any{
		"name": topic, "encryption": map[string]any{"mode": "end_to_end", "recipients": []string{recipient}},
	})
	const marker = "PLAINTEXT-MARKER-7f3a"
	s.publishRaw(t, topic, ageEncrypt(t, recipient, []byte(fmt.Sprintf(`{"password": %q}`, marker))))

	cache := filepath.Join(dir, "cache")
	c := realClient(t, Options{URL: s.url, CacheDir: cache, Decrypt: AgeCommand(key, 0)})
	sub, _ := SubscribeJSON(bg, c, topic, map[string]string{})
	if sub.Get()["password"] != marker {
		t.Fatalf("decrypted value: %v", sub.Get())
	}
	_ = filepath.Walk(cache, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(marker)) {
				t.Errorf("%s holds plaintext", p)
			}
		}
		return nil
	})

	// Without the hook: rejected with a clear error in the consumer audit.
	bare := realClient(t, Options{URL: s.url})
	bsub, _ := SubscribeJSON(bg, bare, topic, map[string]string{"password": "default"})
	var row map[string]any
	eventually(t, "the failure in the consumer audit", 20*time.Second, func() bool {
		row = s.consumer(t, topic, bare.Instance())
		return row != nil && row["last_applied_ok"] == false
	})
	if !strings.Contains(fmt.Sprint(row["last_error"]), "no identity") || bsub.Get()["password"] != "default" {
		t.Fatalf("audit row: %v", row)
	}

	// A tampered chunk: age refuses it, the old value stays.
	bad := ageEncrypt(t, recipient, []byte(`{"password": "new"}`))
	bad[len(bad)-2] ^= 1
	s.publishRaw(t, topic, bad)
	eventually(t, "the tampered version reported", 20*time.Second, func() bool {
		row = s.consumer(t, topic, c.Instance())
		return row != nil && row["last_applied_ok"] == false && row["last_applied_version"] == 2.0
	})
	if !strings.Contains(fmt.Sprint(row["last_error"]), "cannot decrypt the payload") || sub.Get()["password"] != marker {
		t.Fatalf("audit row: %v, value %v", row, sub.Get())
	}
}
