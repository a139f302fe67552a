package imprint

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Delivering one version to one subscription: fetch it (inline data_base64, or streamed
// from data_url resuming with Range), verify its size and SHA-256, run the decoder, swap
// the value in, save it to the disk cache and record the outcome to report. Also the two
// other ways a version arrives: the start-up fallback to older versions, and the
// object-store snapshot read while the server is unreachable.

const (
	maxAttempts = 3    // of one download, each resuming where the previous one broke off
	errorMax    = 1000 // bytes of a failure report
)

// update is one entry of a poll answer's "updates".
type update struct {
	Version     uint64            `json:"version"`
	Pinned      bool              `json:"pinned"`
	Metadata    map[string]string `json:"metadata"`
	ContentType string            `json:"content_type"`
	Size        uint64            `json:"size"`
	SHA256      string            `json:"sha256"`
	DataBase64  *string           `json:"data_base64"`
	DataURL     string            `json:"data_url"`
	// DataURLs is each region's copy in the order to try them (several regions,
	// docs/regions.md); empty with one region: DataURL alone.
	DataURLs []dataURL `json:"data_urls"`
}

// dataURL is one region's copy of a payload.
type dataURL struct {
	Region string `json:"region"`
	URL    string `json:"url"`
}

// downloadURLs is the URLs to try in order: DataURLs, else DataURL alone (no region).
func (u *update) downloadURLs() []dataURL {
	var out []dataURL
	for _, d := range u.DataURLs {
		if d.URL != "" {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return []dataURL{{URL: u.DataURL}}
	}
	return out
}

// fetched is a verified payload: in memory, or a file in place in the topic's directory;
// region is the region whose copy it is ("" inline, with one region, cache, snapshot).
type fetched struct {
	data   []byte
	path   string
	region string
}

// handleUpdate delivers u to sub and records the outcome; at start-up it falls back to
// older versions when u does not apply. It returns an error only for transient failures
// (the version is tried again after a backoff, nothing is reported).
func (c *Client) handleUpdate(ctx context.Context, sub slot, u *update) error {
	key := versionKey{u.Version, u.Pinned}
	st := sub.st()
	st.mu.Lock()
	if st.rejected != nil && *st.rejected == key {
		st.stuck = true
		st.mu.Unlock()
		return nil
	}
	st.stuck = false
	st.mu.Unlock()
	_, _, source, _ := sub.held()
	first := source != SourceServer
	region, err := c.deliver(ctx, sub, u, SourceServer)
	if err == nil {
		st.mu.Lock()
		st.rejected = nil
		st.report = &report{Version: u.Version, OK: true, Region: region}
		st.mu.Unlock()
		return nil
	}
	var rej *rejected
	if !errors.As(err, &rej) {
		return err
	}
	msg := truncate(rej.msg, errorMax)
	c.logf(LevelWarn, fmt.Sprintf("imprint: %s v%d rejected, keeping the current value: %s", sub.topicName(), u.Version, msg))
	c.metrics.count(MetricApplyFailures, map[string]string{"topic": sub.topicName()})
	st.mu.Lock()
	st.rejected, st.stuck = &key, true
	st.report = &report{Version: u.Version, OK: false, Error: msg}
	st.mu.Unlock()
	if first && c.s.startupFallback > 0 {
		c.fallback(ctx, sub, u.Version)
	}
	return nil
}

// deliver fetches, verifies and applies u (a failure that is not transient is a
// *rejected); on success it says which region's copy was used ("" for none).
func (c *Client) deliver(ctx context.Context, sub slot, u *update, source Source) (string, error) {
	f, err := c.fetch(ctx, sub, u)
	if err != nil {
		return "", err
	}
	return f.region, c.applyFetched(sub, u, f, source)
}

// versionInfo is one entry of GET /api/v1/topics/{t}/versions (the fields used here).
type versionInfo struct {
	Version     uint64            `json:"version"`
	Size        uint64            `json:"size"`
	SHA256      string            `json:"sha256"`
	ContentType string            `json:"content_type"`
	Metadata    map[string]string `json:"metadata"`
	Purged      bool              `json:"purged"`
	Scopes      []struct {
		Selector map[string]string `json:"selector"`
	} `json:"scopes"`
}

func (v *versionInfo) releasedTo(labels map[string]string) bool {
	for _, s := range v.Scopes {
		match := true
		for k, want := range s.Selector {
			if got, ok := labels[k]; !ok || got != want {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// fallback: the newest version failed to apply and this node has nothing from the server
// yet, so try the older versions released to it, newest first.
func (c *Client) fallback(ctx context.Context, sub slot, failed uint64) {
	topic := sub.topicName()
	heldVersion, _, _, _ := sub.held()
	limit := c.s.startupFallback*4 + 10
	if limit > 500 {
		limit = 500
	}
	rctx, cancel := context.WithTimeout(ctx, c.s.requestTimeout)
	defer cancel()
	resp, err := c.send(rctx, http.MethodGet, c.url(fmt.Sprintf("/api/v1/topics/%s/versions?limit=%d", topic, limit)), nil, nil)
	var list struct {
		Versions []versionInfo `json:"versions"`
	}
	if err == nil {
		err = readJSON(resp, maxListBody, "versions list", &list)
	}
	if err != nil {
		c.logf(LevelWarn, fmt.Sprintf("imprint: cannot list older versions of %s to fall back to: %v", topic, err))
		return
	}
	tried := 0
	for i := range list.Versions {
		v := &list.Versions[i]
		if tried >= c.s.startupFallback {
			break
		}
		if v.Version >= failed || v.Version <= heldVersion || v.Purged || !v.releasedTo(c.labels) {
			continue
		}
		tried++
		u := &update{
			Version: v.Version, Metadata: v.Metadata, ContentType: v.ContentType, Size: v.Size, SHA256: v.SHA256,
			DataURL: fmt.Sprintf("/api/v1/topics/%s/versions/%d/data", topic, v.Version),
		}
		_, err := c.deliver(ctx, sub, u, SourceServer)
		if err == nil {
			c.logf(LevelWarn, fmt.Sprintf("imprint: %s started from v%d: the newest (v%d) does not apply", topic, v.Version, failed))
			return
		}
		var rej *rejected
		if !errors.As(err, &rej) {
			c.logf(LevelWarn, fmt.Sprintf("imprint: cannot fetch older version %s v%d; giving up the fallback: %v", topic, v.Version, err))
			return
		}
		c.logf(LevelWarn, fmt.Sprintf("imprint: older version %s v%d does not apply either: %v", topic, v.Version, err))
		c.metrics.count(MetricApplyFailures, map[string]string{"topic": topic})
	}
}

// applyFetched runs the decoder on a verified payload; on success the value is swapped in
// and the payload saved to the disk cache. A decoder failure is a rejection.
func (c *Client) applyFetched(sub slot, u *update, f fetched, source Source) error {
	data := f.data
	if f.path == "" {
		var err error
		if data, err = c.decrypted(sub.topicName(), u.Version, f.data); err != nil {
			return err
		}
	}
	p := &Payload{
		Topic: sub.topicName(), Version: u.Version, SHA256: u.SHA256, ContentType: u.ContentType,
		Metadata: u.Metadata, Pinned: u.Pinned, Source: source, Data: data, Path: f.path, Region: f.region,
	}
	if p.Metadata == nil {
		p.Metadata = map[string]string{}
	}
	if err := sub.tryApply(p); err != nil {
		if f.path != "" { // a downloaded file that did not apply goes (unless it is the one in use)
			v, has, _, sha := sub.held()
			if !has || filepath.Base(f.path) != cacheFileName(v, sha) {
				_ = os.Remove(f.path)
			}
		}
		return err
	}
	topic := sub.topicName()
	c.metrics.gauge(MetricVersion, float64(u.Version), map[string]string{"topic": topic})
	c.metrics.count(MetricUpdatesApplied, map[string]string{"topic": topic})
	c.logf(LevelInfo, fmt.Sprintf("imprint: %s v%d applied (source %s)", topic, u.Version, source))
	c.save(topic, u, f)
	return nil
}

// save records the applied payload in the cache (failures are only logged, once).
// Without a cache directory only file payloads are recorded, in the private temporary
// directory (never read back): that prunes the files older than the previous one.
func (c *Client) save(topic string, u *update, f fetched) {
	if !c.store.persistent && f.path == "" {
		return
	}
	path := f.path
	var err error
	if path == "" {
		path, err = c.store.writePayload(topic, u.Version, u.SHA256, f.data)
	}
	if err == nil {
		err = c.store.commit(cacheMeta{
			Topic: topic, Version: u.Version, SHA256: u.SHA256, Size: u.Size, ContentType: u.ContentType,
			Metadata: nonNil(u.Metadata), File: filepath.Base(path), SavedAt: uint64(time.Now().Unix()),
		})
	}
	if err != nil {
		if !c.cacheWarned.Swap(true) {
			c.logf(LevelWarn, fmt.Sprintf("imprint: cannot write the disk cache in %s; going on without it: %v", c.store.root, err))
		} else {
			c.logf(LevelDebug, fmt.Sprintf("imprint: cannot write the disk cache: %v", err))
		}
	}
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// fetch gets and verifies u's payload for sub: inline, else downloaded (a mismatch is
// downloaded once more, then rejected).
func (c *Client) fetch(ctx context.Context, sub slot, u *update) (fetched, error) {
	if u.DataBase64 != nil {
		data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(*u.DataBase64))
		if err != nil {
			return fetched{}, reject("data_base64 is not valid base64: %v", err)
		}
		verr := verify(u.Size, u.SHA256, uint64(len(data)), sha256Hex(data))
		if verr == nil {
			if sub.kind() == kindMemory {
				return fetched{data: data}, nil
			}
			path, err := c.store.writePayload(sub.topicName(), u.Version, u.SHA256, data)
			if err != nil {
				return fetched{}, fmt.Errorf("writing the payload of %s: %w", sub.topicName(), err)
			}
			return fetched{path: path}, nil
		}
		if u.DataURL == "" {
			return fetched{}, reject("%s", verr.Error())
		}
		c.logf(LevelWarn, fmt.Sprintf("imprint: the inline payload of %s v%d does not verify (%v); downloading it", sub.topicName(), u.Version, verr))
	}
	if u.DataURL == "" {
		return fetched{}, reject("the update has neither data_base64 nor data_url")
	}
	urls := u.downloadURLs()
	for _, d := range urls {
		if _, err := url.Parse(c.url(d.URL)); err != nil {
			return fetched{}, reject("data_url %q: %v", d.URL, err)
		}
	}
	if len(urls) > 1 {
		return c.fetchFailover(ctx, sub, u, urls)
	}
	target := c.url(urls[0].URL)
	var last error
	for i := 0; i < 2; i++ {
		f, err := c.download(ctx, sub, target, u)
		if err == nil {
			f.region = urls[0].Region
			return f, nil
		}
		var verr *VerifyError
		if errors.As(err, &verr) {
			c.logf(LevelWarn, fmt.Sprintf("imprint: the downloaded payload of %s v%d does not verify: %v", sub.topicName(), u.Version, err))
			last = err
			continue
		}
		var api *APIError
		if errors.As(err, &api) && !api.Transient() {
			return fetched{}, reject("%s", err.Error()) // purged, gone, refused: this version will not do
		}
		return fetched{}, err
	}
	return fetched{}, reject("%s", last.Error())
}

// fetchFailover tries each region's URL in order: a connect error (or timeout), a 5xx or
// a payload that does not verify moves on to the next region. The version is rejected
// only when every region's copy was reachable and none verified; if a region was
// unreachable the failure is transient (retried with backoff), as the Rust client does.
func (c *Client) fetchFailover(ctx context.Context, sub slot, u *update, urls []dataURL) (fetched, error) {
	var unreachable, mismatch error
	for _, d := range urls {
		f, err := c.download(ctx, sub, c.url(d.URL), u)
		if err == nil {
			c.metrics.count(MetricRegionDownloads, map[string]string{"region": d.Region})
			f.region = d.Region
			return f, nil
		}
		if ctx.Err() != nil {
			return fetched{}, err
		}
		var verr *VerifyError
		var api *APIError
		var nerr *NetworkError
		switch {
		case errors.As(err, &verr):
			c.logf(LevelWarn, fmt.Sprintf("imprint: the %s copy of %s v%d does not verify (%v); trying the next region", d.Region, sub.topicName(), u.Version, err))
			mismatch = err
		case errors.As(err, &api) && api.Status >= 500, errors.As(err, &nerr):
			c.logf(LevelWarn, fmt.Sprintf("imprint: region %s failed for %s v%d (%v); trying the next region", d.Region, sub.topicName(), u.Version, err))
			unreachable = err
		case errors.As(err, &api) && !api.Transient():
			return fetched{}, reject("%s", err.Error())
		default:
			return fetched{}, err
		}
		c.metrics.count(MetricRegionFailovers, map[string]string{"region": d.Region})
	}
	if unreachable != nil {
		return fetched{}, unreachable
	}
	return fetched{}, reject("%s", mismatch.Error())
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func verify(size uint64, sha string, gotSize uint64, gotSHA string) error {
	if gotSize != size {
		return &VerifyError{Msg: fmt.Sprintf("size mismatch: expected %d bytes, received %d", size, gotSize)}
	}
	if !strings.EqualFold(gotSHA, sha) {
		return &VerifyError{Msg: fmt.Sprintf("checksum mismatch: expected sha256 %s, received %s", sha, gotSHA)}
	}
	return nil
}

// sink is where a download goes: memory, or a temporary file in the topic's directory.
type sink struct {
	buf  []byte
	file *os.File
	tmp  string
}

func (s *sink) write(p []byte) error {
	if s.file == nil {
		s.buf = append(s.buf, p...)
		return nil
	}
	_, err := s.file.Write(p)
	return err
}

func (s *sink) reset() error {
	if s.file == nil {
		s.buf = s.buf[:0]
		return nil
	}
	if err := s.file.Truncate(0); err != nil {
		return err
	}
	_, err := s.file.Seek(0, io.SeekStart)
	return err
}

func (s *sink) abandon() {
	if s.file != nil {
		_ = s.file.Close()
		_ = os.Remove(s.tmp)
	}
}

// download streams target into memory or a file, resuming an interrupted transfer with
// Range, and verifies it.
func (c *Client) download(ctx context.Context, sub slot, target string, u *update) (fetched, error) {
	var sk sink
	topic := sub.topicName()
	if sub.kind() == kindFile {
		if _, err := c.store.prepare(topic); err != nil {
			return fetched{}, fmt.Errorf("the cache directory of %s: %w", topic, err)
		}
		sk.tmp = c.store.tempPath(topic)
		f, err := os.OpenFile(sk.tmp, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o644)
		if err != nil {
			return fetched{}, fmt.Errorf("the download file of %s: %w", topic, err)
		}
		sk.file = f
	} else {
		sk.buf = make([]byte, 0, minU64(u.Size, 64<<20))
	}
	written, h, err := c.downloadInto(ctx, target, u, &sk)
	if err == nil {
		err = verify(u.Size, u.SHA256, written, hex.EncodeToString(h.Sum(nil)))
	}
	if err != nil {
		sk.abandon()
		return fetched{}, err
	}
	if sk.file == nil {
		return fetched{data: sk.buf}, nil
	}
	if err := sk.file.Sync(); err != nil {
		sk.abandon()
		return fetched{}, fmt.Errorf("syncing %s: %w", sk.tmp, err)
	}
	if err := sk.file.Close(); err != nil {
		_ = os.Remove(sk.tmp)
		return fetched{}, fmt.Errorf("closing %s: %w", sk.tmp, err)
	}
	path, err := c.store.adoptFile(topic, u.Version, u.SHA256, sk.tmp)
	if err != nil {
		_ = os.Remove(sk.tmp)
		return fetched{}, fmt.Errorf("moving the download of %s into place: %w", topic, err)
	}
	return fetched{path: path}, nil
}

func minU64(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}

func (c *Client) downloadInto(ctx context.Context, target string, u *update, sk *sink) (uint64, hash.Hash, error) {
	h := sha256.New()
	var written uint64
	buf := make([]byte, 64<<10)
	for attempt := 1; ; attempt++ {
		var hdr http.Header
		if written > 0 {
			hdr = http.Header{"Range": {fmt.Sprintf("bytes=%d-", written)}}
		}
		body, resp, err := c.openBody(ctx, target, hdr)
		if err != nil {
			return written, h, err
		}
		resumed := written > 0 && resp.StatusCode == http.StatusPartialContent && rangeStart(resp) == written
		if written > 0 && !resumed { // the server sent everything again (or another range): start over
			if err := sk.reset(); err != nil {
				body.Close()
				return 0, h, err
			}
			h.Reset()
			written = 0
		}
		var broke error
		for {
			n, rerr := body.Read(buf)
			if n > 0 {
				written += uint64(n)
				if written > u.Size {
					body.Close()
					return written, h, &VerifyError{Msg: fmt.Sprintf("size mismatch: expected %d bytes, received more", u.Size)}
				}
				h.Write(buf[:n])
				if err := sk.write(buf[:n]); err != nil {
					body.Close()
					return written, h, err
				}
			}
			if rerr == io.EOF {
				body.Close()
				return written, h, nil
			}
			if rerr != nil {
				broke = rerr
				break
			}
		}
		body.Close()
		if ctx.Err() != nil {
			return written, h, &NetworkError{Op: "GET " + target, Err: ctx.Err()}
		}
		if attempt >= maxAttempts {
			return written, h, &NetworkError{Op: "GET " + target, Err: broke}
		}
		c.logf(LevelInfo, fmt.Sprintf("imprint: download of %s broke off at %d bytes (%v); resuming", target, written, broke))
	}
}

// openBody sends a GET whose answer must start within RequestTimeout and whose body may
// not go silent for longer than that either.
func (c *Client) openBody(ctx context.Context, target string, hdr http.Header) (io.ReadCloser, *http.Response, error) {
	rctx, cancel := context.WithCancel(ctx)
	ib := &idleBody{idle: c.s.requestTimeout, cancel: cancel}
	ib.timer = time.AfterFunc(c.s.requestTimeout, ib.expire)
	resp, err := c.send(rctx, http.MethodGet, target, nil, hdr)
	if err != nil {
		ib.timer.Stop()
		cancel()
		if ib.fired.Load() {
			return nil, nil, &NetworkError{Op: "GET " + target, Err: fmt.Errorf("no answer within %v", c.s.requestTimeout)}
		}
		return nil, nil, err
	}
	ib.rc = resp.Body
	return ib, resp, nil
}

// idleBody cancels its request when no bytes arrive for idle.
type idleBody struct {
	rc     io.ReadCloser
	idle   time.Duration
	timer  *time.Timer
	cancel context.CancelFunc
	fired  atomic.Bool
}

func (b *idleBody) expire() {
	b.fired.Store(true)
	b.cancel()
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && b.fired.Load() {
		err = fmt.Errorf("no data for %v: %w", b.idle, err)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	err := b.rc.Close()
	b.cancel()
	return err
}

// rangeStart reads the start of "Content-Range: bytes a-b/n".
func rangeStart(resp *http.Response) uint64 {
	v := strings.TrimPrefix(resp.Header.Get("Content-Range"), "bytes ")
	a, _, ok := strings.Cut(v, "-")
	if !ok {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(a), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// startFromSnapshot starts sub from its topic's snapshot if one verifies and applies;
// never fails (what went wrong is logged and the default stays).
func (c *Client) startFromSnapshot(ctx context.Context, sub slot) {
	topic := sub.topicName()
	m, err := c.snaps.manifest(ctx, topic, c.s.requestTimeout)
	if err != nil {
		c.logf(LevelWarn, fmt.Sprintf("imprint: cannot read the snapshot of %s: %v", topic, err))
		return
	}
	if m == nil {
		c.logf(LevelInfo, fmt.Sprintf("imprint: no snapshot of %s in %s", topic, c.snaps.raw))
		return
	}
	u := &update{Version: m.Version, Metadata: m.Metadata, ContentType: m.ContentType, Size: m.Size, SHA256: m.SHA256}
	f, err := c.snapshotPayload(ctx, sub, m)
	if err == nil {
		err = c.applyFetched(sub, u, f, SourceSnapshot)
	}
	if err != nil {
		c.logf(LevelWarn, fmt.Sprintf("imprint: the snapshot of %s (v%d) is not usable; keeping the default: %v", topic, m.Version, err))
		return
	}
	c.logf(LevelWarn, fmt.Sprintf("imprint: the server is unreachable: %s started from the object-store snapshot v%d", topic, m.Version))
}

// snapshotPayload reads and verifies the manifest's payload (inline or its object).
func (c *Client) snapshotPayload(ctx context.Context, sub slot, m *manifest) (fetched, error) {
	var rc io.ReadCloser
	switch {
	case m.DataBase64 != nil:
		data, err := base64.StdEncoding.DecodeString(strings.TrimSpace(*m.DataBase64))
		if err != nil {
			return fetched{}, fmt.Errorf("snapshot data_base64: %w", err)
		}
		rc = io.NopCloser(strings.NewReader(string(data)))
	case m.Object != nil && *m.Object != "":
		r, err := c.snaps.openObject(ctx, m, c.s.requestTimeout)
		if err != nil {
			return fetched{}, err
		}
		if r == nil {
			return fetched{}, fmt.Errorf("snapshot object %s is missing", *m.Object)
		}
		rc = r
	default:
		return fetched{}, errors.New("the snapshot has neither data_base64 nor object")
	}
	defer rc.Close()
	var sk sink
	topic := sub.topicName()
	if sub.kind() == kindFile {
		if _, err := c.store.prepare(topic); err != nil {
			return fetched{}, err
		}
		sk.tmp = c.store.tempPath(topic)
		f, err := os.OpenFile(sk.tmp, os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o644)
		if err != nil {
			return fetched{}, err
		}
		sk.file = f
	}
	h := sha256.New()
	var n uint64
	buf := make([]byte, 64<<10)
	for {
		k, err := rc.Read(buf)
		if k > 0 {
			n += uint64(k)
			if n > m.Size {
				sk.abandon()
				return fetched{}, &VerifyError{Msg: fmt.Sprintf("size mismatch: expected %d bytes, received more", m.Size)}
			}
			h.Write(buf[:k])
			if werr := sk.write(buf[:k]); werr != nil {
				sk.abandon()
				return fetched{}, werr
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			sk.abandon()
			return fetched{}, fmt.Errorf("reading the snapshot of %s: %w", topic, err)
		}
	}
	if err := verify(m.Size, m.SHA256, n, hex.EncodeToString(h.Sum(nil))); err != nil {
		sk.abandon()
		return fetched{}, err
	}
	if sk.file == nil {
		return fetched{data: sk.buf}, nil
	}
	if err := sk.file.Sync(); err != nil {
		sk.abandon()
		return fetched{}, err
	}
	_ = sk.file.Close()
	path, err := c.store.adoptFile(topic, m.Version, m.SHA256, sk.tmp)
	if err != nil {
		_ = os.Remove(sk.tmp)
		return fetched{}, err
	}
	return fetched{path: path}, nil
}
