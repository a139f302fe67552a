package imprint

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The disk cache: per topic, the last payload that applied. The Rust client's layout:
// <dir>/<topic>/v<version>-<sha256[:16]>.bin (the payload) and <dir>/<topic>/meta.json
// (which file is current, with its version and SHA-256). Every write goes to a .tmp-*
// file that is synced, then renamed: a crash leaves the old state or the new one. The
// previous payload file is kept (a reader handed its path a moment ago can still open
// it); older ones go.

const (
	metaFile  = "meta.json"
	tmpPrefix = ".tmp-"
	staleTmp  = time.Hour
)

type cacheMeta struct {
	Topic       string            `json:"topic"`
	Version     uint64            `json:"version"`
	SHA256      string            `json:"sha256"`
	Size        uint64            `json:"size"`
	ContentType string            `json:"content_type"`
	Metadata    map[string]string `json:"metadata"`
	File        string            `json:"file"`
	SavedAt     uint64            `json:"saved_at"`
}

type store struct {
	root       string
	persistent bool
}

func newStore(dir string) (*store, error) {
	if dir != "" {
		return &store{root: dir, persistent: true}, nil
	}
	root, err := os.MkdirTemp("", "imprint-go-")
	if err != nil {
		return nil, &ConfigError{Msg: fmt.Sprintf("temporary directory for payload files: %v", err)}
	}
	return &store{root: root}, nil
}

// discard removes a private temporary directory (never a configured cache).
func (s *store) discard() {
	if !s.persistent {
		_ = os.RemoveAll(s.root)
	}
}

// topicDir: topic names are validated ([a-z0-9][a-z0-9._-]*), never "..", never a "/".
func (s *store) topicDir(topic string) string { return filepath.Join(s.root, topic) }

func cacheFileName(version uint64, sha string) string {
	if len(sha) > 16 {
		sha = sha[:16]
	}
	return fmt.Sprintf("v%d-%s.bin", version, sha)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return fmt.Sprintf("%x", time.Now().UnixNano())
	}
	return hex.EncodeToString(b)
}

// prepare creates the topic's directory and removes stale temporary files in it.
func (s *store) prepare(topic string) (string, error) {
	dir := s.topicDir(topic)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), tmpPrefix) {
				continue
			}
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTmp {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	return dir, nil
}

func (s *store) tempPath(topic string) string {
	return filepath.Join(s.topicDir(topic), tmpPrefix+randomHex(8))
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// writePayload writes data as the topic's payload file (atomically); returns its path.
func (s *store) writePayload(topic string, version uint64, sha string, data []byte) (string, error) {
	dir, err := s.prepare(topic)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, cacheFileName(version, sha))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	tmp := s.tempPath(topic)
	if err := writeSynced(tmp, data); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return "", err
	}
	syncDir(dir)
	return path, nil
}

// adoptFile moves a downloaded (and verified) temporary file into place.
func (s *store) adoptFile(topic string, version uint64, sha, tmp string) (string, error) {
	dir, err := s.prepare(topic)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, cacheFileName(version, sha))
	if err := os.Rename(tmp, path); err != nil {
		return "", err
	}
	syncDir(dir)
	return path, nil
}

// commit records m (whose file is in place) as the topic's current payload, and removes
// payload files other than it and the one it replaces.
func (s *store) commit(m cacheMeta) error {
	dir, err := s.prepare(m.Topic)
	if err != nil {
		return err
	}
	var previous string
	if old, err := s.readMeta(m.Topic); err == nil {
		previous = old.File
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.tempPath(m.Topic)
	if err := writeSynced(tmp, data); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, metaFile)); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	syncDir(dir)
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			n := e.Name()
			if strings.HasSuffix(n, ".bin") && n != m.File && n != previous {
				_ = os.Remove(filepath.Join(dir, n))
			}
		}
	}
	return nil
}

func (s *store) readMeta(topic string) (*cacheMeta, error) {
	data, err := os.ReadFile(filepath.Join(s.topicDir(topic), metaFile))
	if err != nil {
		return nil, err
	}
	var m cacheMeta
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// load returns the cached payload of topic if there is one whose file still has the
// recorded size and SHA-256 (a damaged entry is ignored, with a warning).
func (s *store) load(topic string, log func(Level, string)) (*cacheMeta, string) {
	if !s.persistent {
		return nil, ""
	}
	m, err := s.readMeta(topic)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			log(LevelWarn, fmt.Sprintf("imprint: ignoring the unreadable cache entry of %s: %v", topic, err))
		}
		return nil, ""
	}
	if m.Topic != topic || m.File == "" || strings.ContainsAny(m.File, `/\`) || strings.HasPrefix(m.File, ".") {
		log(LevelWarn, fmt.Sprintf("imprint: ignoring a cache entry of %s that names another topic or file", topic))
		return nil, ""
	}
	path := filepath.Join(s.topicDir(topic), m.File)
	sha, size, err := sha256File(path)
	if err != nil {
		log(LevelWarn, fmt.Sprintf("imprint: cannot read the cached payload %s: %v", path, err))
		return nil, ""
	}
	if sha != m.SHA256 || size != m.Size {
		log(LevelWarn, fmt.Sprintf("imprint: ignoring the damaged cache entry %s (expected sha256 %s, found %s)", path, m.SHA256, sha))
		return nil, ""
	}
	return m, path
}

func sha256File(path string) (string, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), uint64(n), nil
}
