package imprint

// End-to-end encrypted topics (docs/encryption.md): payloads are age v1 files for the
// topic's X25519 recipients. Go 1.19's standard library has neither X25519 nor
// ChaCha20-Poly1305, and this client depends on nothing else, so decryption is a hook:
// Options.Decrypt. AgeCommand gives one that runs the `age` binary (Debian's `age`
// package); filippo.io/age's Decrypt fits the hook too, for programs that may import it.

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"time"
)

// AgeMagic is the first line of every age v1 file.
const AgeMagic = "age-encryption.org/v1\n"

// IsAge reports whether data starts like an age v1 file (binary, not armored).
func IsAge(data []byte) bool { return bytes.HasPrefix(data, []byte(AgeMagic)) }

// DecryptFunc turns the verified ciphertext of a version of topic into its plaintext.
// An error rejects the version (reported to the server; the old value stays).
type DecryptFunc func(topic string, ciphertext []byte) ([]byte, error)

// AgeCommand decrypts with the `age` binary: `age --decrypt --identity identityFile`,
// the ciphertext on its standard input, within timeout (default 60 s).
func AgeCommand(identityFile string, timeout time.Duration) DecryptFunc {
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	return func(topic string, ciphertext []byte) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "age", "--decrypt", "--identity", identityFile)
		cmd.Stdin = bytes.NewReader(ciphertext)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("age: %v: %s", err, bytes.TrimSpace(errOut.Bytes()))
		}
		return out.Bytes(), nil
	}
}

// decrypted is the plaintext of an in-memory payload: data itself unless it is an age
// file, which needs the Decrypt hook. File payloads stay the ciphertext file (the cache
// never holds plaintext): Payload.Encrypted says so, and the decoder decrypts.
func (c *Client) decrypted(topic string, version uint64, data []byte) ([]byte, error) {
	if !IsAge(data) {
		return data, nil
	}
	if c.decrypt == nil {
		return nil, reject("version %d of %q is end-to-end encrypted (age) and this client has no identity to decrypt it: set Options.Decrypt (imprint.AgeCommand)", version, topic)
	}
	plain, err := c.decrypt(topic, data)
	if err != nil {
		return nil, reject("cannot decrypt the payload: %v", err)
	}
	return plain, nil
}
