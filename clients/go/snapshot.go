package imprint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Object-store snapshots: the server's worker keeps snapshots/<topic>.json in its
// payload store, naming what "*" (a node without labels) resolves to, with the payload
// inline or the key of its object in the same store. A subscription reads it when the
// server is unreachable (network error, 5xx) and nothing is cached. A topic encrypted at
// rest has a sealed manifest (and maybe a sealed object), opened with the keyring (sealed.go).

const manifestFormat = 1

type manifest struct {
	Format      int               `json:"format"`
	Topic       string            `json:"topic"`
	Version     uint64            `json:"version"`
	SHA256      string            `json:"sha256"`
	Size        uint64            `json:"size"`
	ContentType string            `json:"content_type"`
	Metadata    map[string]string `json:"metadata"`
	DataBase64  *string           `json:"data_base64"`
	Object      *string           `json:"object"`
	// ObjectSealed: the object's bytes are in the sealed format (size and sha256 are the
	// plaintext's).
	ObjectSealed bool `json:"object_sealed"`
}

type snapshots struct {
	raw     string
	dir     string // file://
	base    *url.URL
	presign func(ctx context.Context, key string) (string, error)
	http    *http.Client
	keyring *keyring // opens sealed manifests and objects (nil: none)
}

func openSnapshots(raw string, presign func(context.Context, string) (string, error)) (*snapshots, error) {
	bad := func(msg string) error { return &ConfigError{Msg: fmt.Sprintf("snapshot store %q: %s", raw, msg)} }
	u, err := url.Parse(raw)
	if err != nil {
		return nil, bad(err.Error())
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, bad("a file URL names no host (file:///dir)")
		}
		if presign != nil {
			return nil, bad("SnapshotURL is for https:// stores")
		}
		if !filepath.IsAbs(u.Path) {
			return nil, bad("not an absolute file URL")
		}
		return &snapshots{raw: raw, dir: filepath.Clean(u.Path)}, nil
	case "https", "http":
		if u.Host == "" {
			return nil, bad("no host")
		}
		return &snapshots{raw: raw, base: u, presign: presign, http: http.DefaultClient}, nil
	case "s3", "s3a", "gs", "az":
		return nil, bad("the Go client reads file:// stores and https:// URLs (presigned with SnapshotURL, or a gateway); give it one of those")
	default:
		return nil, bad(fmt.Sprintf("unsupported scheme %q (use file:// or https://)", u.Scheme))
	}
}

func safeKey(key string) bool {
	for _, p := range strings.Split(key, "/") {
		if p == ".." || p == "." {
			return false
		}
	}
	return key != "" && !strings.HasPrefix(key, "/")
}

// open returns the object's bytes (nil, nil when it does not exist); the caller closes it.
func (s *snapshots) open(ctx context.Context, key string, timeout time.Duration) (io.ReadCloser, error) {
	if !safeKey(key) {
		return nil, fmt.Errorf("snapshot object key %q", key)
	}
	if s.dir != "" {
		f, err := os.Open(filepath.Join(s.dir, filepath.FromSlash(key)))
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("snapshot object %s: %w", key, err)
		}
		return f, nil
	}
	var target string
	if s.presign != nil {
		u, err := s.presign(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("presigning snapshot object %s: %w", key, err)
		}
		target = u
	} else {
		u := *s.base
		u.Path = strings.TrimRight(u.Path, "/") + "/" + key
		u.RawPath = ""
		target = u.String()
	}
	rctx, cancel := context.WithCancel(ctx)
	ib := &idleBody{idle: timeout, cancel: cancel}
	ib.timer = time.AfterFunc(timeout, ib.expire) // the answer, then each chunk, within timeout
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, target, nil)
	if err != nil {
		ib.timer.Stop()
		cancel()
		return nil, fmt.Errorf("snapshot object %s: %w", key, err)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := s.http.Do(req)
	if err != nil {
		ib.timer.Stop()
		cancel()
		return nil, fmt.Errorf("snapshot object %s: %w", key, err)
	}
	ib.rc = resp.Body
	if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden && s.presign == nil {
		// (S3 answers 403 for a missing key without list rights.)
		ib.Close()
		return nil, nil
	}
	if resp.StatusCode != http.StatusOK {
		ib.Close()
		return nil, fmt.Errorf("snapshot object %s: HTTP %d", key, resp.StatusCode)
	}
	return ib, nil
}

func (s *snapshots) manifest(ctx context.Context, topic string, timeout time.Duration) (*manifest, error) {
	rc, err := s.open(ctx, "snapshots/"+topic+".json", timeout)
	if err != nil || rc == nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxPollBody))
	if err != nil {
		return nil, fmt.Errorf("snapshot manifest of %s: %w", topic, err)
	}
	var outer struct {
		Format int     `json:"format"`
		Topic  string  `json:"topic"`
		Key    string  `json:"key"`
		Sealed *string `json:"sealed"`
	}
	if err := json.Unmarshal(data, &outer); err != nil {
		return nil, fmt.Errorf("snapshot manifest of %s: %w", topic, err)
	}
	if outer.Sealed != nil {
		if outer.Format != manifestFormat || outer.Topic != topic {
			return nil, fmt.Errorf("snapshot manifest of %s: sealed manifest format %d for %q", topic, outer.Format, outer.Topic)
		}
		if data, err = openSealedManifest(s.keyring, outer.Key, *outer.Sealed); err != nil {
			return nil, fmt.Errorf("snapshot manifest of %s: %w", topic, err)
		}
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("snapshot manifest of %s: %w", topic, err)
	}
	if m.Format != manifestFormat || m.Topic != topic {
		return nil, fmt.Errorf("snapshot manifest of %s: format %d for %q", topic, m.Format, m.Topic)
	}
	return &m, nil
}

// openObject opens the object a manifest names (nil, nil when it does not exist), as its
// plaintext when it is sealed.
func (s *snapshots) openObject(ctx context.Context, m *manifest, timeout time.Duration) (io.ReadCloser, error) {
	key := *m.Object
	if m.ObjectSealed && s.keyring == nil {
		return nil, fmt.Errorf("snapshot object %s is sealed and this client has no keyring (Options.SnapshotKeyring)", key)
	}
	rc, err := s.open(ctx, key, timeout)
	if err != nil || rc == nil || !m.ObjectSealed {
		return rc, err
	}
	plain, err := openSealed(s.keyring, rc)
	if err != nil {
		rc.Close()
		return nil, fmt.Errorf("snapshot object %s: %w", key, err)
	}
	return sealedObject{Reader: plain, src: rc}, nil
}
