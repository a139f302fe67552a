package imprint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
)

const (
	userAgent    = "imprint-client-go/" + Version
	maxPollBody  = 256 << 20 // a poll answer: inline payloads of up to 64 KiB per topic
	maxListBody  = 32 << 20
	maxErrorBody = 64 << 10
)

// base is the server polled now.
func (c *Client) base() string {
	i := int(c.current.Load())
	if i < 0 || i >= len(c.bases) {
		i = 0
	}
	return c.bases[i]
}

// failOver moves to the next server, if there are several (wrapping around).
func (c *Client) failOver() {
	if len(c.bases) < 2 {
		return
	}
	next := (int(c.current.Load()) + 1) % len(c.bases)
	c.current.Store(int32(next))
	c.logf(LevelWarn, "imprint: trying the next server "+c.bases[next])
}

// isOurs: u is on one of the configured servers (the whole origin: a link to
// "http://imprint:3000.evil.example/" is not "http://imprint:3000").
func (c *Client) isOurs(u string) bool {
	for _, b := range c.bases {
		if rest := strings.TrimPrefix(u, b); rest != u {
			if rest == "" || rest[0] == '/' || rest[0] == '?' || rest[0] == '#' {
				return true
			}
		}
	}
	return false
}

// url resolves a path of the API (or a payload link) against the current server.
func (c *Client) url(path string) string {
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		return path
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	return c.base() + path
}

// send makes one request; the caller reads and closes the body. A non-2xx answer is
// returned as *APIError (its body read and closed); no answer as *NetworkError.
func (c *Client) send(ctx context.Context, method, u string, body any, header http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, reject("bad request URL %q: %v", u, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("Accept", "application/json, */*")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" && c.isOurs(u) { // only our own servers get the token
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &NetworkError{Op: method + " " + u, Err: unwrapURLError(ctx, err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		resp.Body.Close()
		return nil, apiError(resp.StatusCode, resp.Header, data)
	}
	return resp, nil
}

// unwrapURLError drops net/http's repetition of the method and URL, and makes "context
// deadline exceeded" say what it was.
func unwrapURLError(ctx context.Context, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		err = ue.Err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer in time: %w", err)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("timed out: %w", err)
	}
	return err
}

// readJSON reads a bounded JSON body into v.
func readJSON(resp *http.Response, limit int64, what string, v any) error {
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return &NetworkError{Op: "reading " + what, Err: err}
	}
	if int64(len(data)) > limit {
		return &NetworkError{Op: "reading " + what, Err: fmt.Errorf("answer larger than %d bytes", limit)}
	}
	if err := json.Unmarshal(data, v); err != nil {
		return &protocolError{msg: fmt.Sprintf("%s: the answer is not what was expected: %v", what, err)}
	}
	return nil
}

// protocolError: the server answered something this client does not understand
// (retried like a network error for polls; a payload that cannot be read is rejected).
type protocolError struct{ msg string }

func (e *protocolError) Error() string { return "imprint: " + e.msg }

func readFileBounded(path string, size uint64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, int64(size)+1))
	if err != nil {
		return nil, err
	}
	if uint64(len(data)) != size {
		return nil, fmt.Errorf("%s: %d bytes, expected %d", path, len(data), size)
	}
	return data, nil
}
