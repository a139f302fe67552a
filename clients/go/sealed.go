package imprint

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
)

// Sealed snapshots (docs/encryption.md, "At rest"): the snapshot manifest of a topic
// encrypted at rest is a SealedManifest, {"format": 1, "topic", "key", "sealed": base64},
// whose "sealed" is the ordinary manifest's JSON in Imprint's sealed format; the object it
// names may be sealed too ("object_sealed": true). Options.SnapshotKeyring, a copy of the
// server's keyring file, opens both. The format (imprint_seal::format, the Rust reference):
//
//	"IMPRAR" 0x01                  magic and format version
//	u8 n, key id (n bytes)         the provider's key id
//	u32 BE                         the key-encryption key's version (0: a KMS key)
//	u16 BE m, wrapped key (m)      the data key as the provider wrapped it
//	u32 BE                         plaintext chunk size (65536)
//	7 bytes                        the STREAM nonce prefix
//	chunks                         AES-256-GCM, 65536 bytes + 16-byte tag each, the last flagged
//
// Each chunk's nonce is the prefix, the chunk counter (u32 BE) and a last-chunk flag byte;
// its associated data the magic, format version, chunk size and nonce prefix. A keyring
// wraps a data key as nonce (12) || AES-256-GCM(KEK, data key) || tag (16) with the
// associated data "imprint-keyring-v1" 0 key-id 0 version (u32 BE).

const (
	sealMagic       = "IMPRAR"
	sealFormat      = 1
	sealChunk       = 64 << 10
	sealTag         = 16
	sealNoncePrefix = 7
	sealMaxWrapped  = 4096
	keyringFormat   = 1
	keyringAAD      = "imprint-keyring-v1"
	wrapNonce       = 12
)

// keyring is a local keyring file's key-encryption keys: id -> version -> 32-byte KEK.
type keyring struct {
	path string
	keys map[string]map[uint32][]byte
}

// loadKeyring reads a keyring file (docs/encryption.md, "Key providers"); whatever does not
// parse is a ConfigError naming the file.
func loadKeyring(path string) (*keyring, error) {
	bad := func(msg string) error { return &ConfigError{Msg: fmt.Sprintf("snapshot keyring %s: %s", path, msg)} }
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, bad(err.Error())
	}
	var file struct {
		Format *int `json:"format"`
		Keys   map[string]struct {
			Primary  *uint32           `json:"primary"`
			Versions map[string]string `json:"versions"`
		} `json:"keys"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&file); err != nil {
		return nil, bad("not a keyring file: " + err.Error())
	}
	if file.Format == nil || *file.Format != keyringFormat {
		return nil, bad(fmt.Sprintf("format must be %d", keyringFormat))
	}
	ring := &keyring{path: path, keys: map[string]map[uint32][]byte{}}
	for id, e := range file.Keys {
		if !validSealKeyID(id) {
			return nil, bad(fmt.Sprintf("%q is not a key id (1-255 of A-Z a-z 0-9 . _ - : /)", id))
		}
		versions := map[uint32][]byte{}
		for v, b64 := range e.Versions {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return nil, bad(fmt.Sprintf("key %q: version %q is not a number from 1", id, v))
			}
			kek, err := base64.StdEncoding.DecodeString(b64)
			if err != nil || len(kek) != 32 {
				return nil, bad(fmt.Sprintf("key %q version %s is not the base64 of 32 bytes", id, v))
			}
			versions[uint32(n)] = kek
		}
		if e.Primary == nil {
			return nil, bad(fmt.Sprintf("key %q has no primary version", id))
		}
		if _, ok := versions[*e.Primary]; !ok {
			return nil, bad(fmt.Sprintf("key %q names primary version %d that it lacks", id, *e.Primary))
		}
		ring.keys[id] = versions
	}
	return ring, nil
}

func validSealKeyID(id string) bool {
	if id == "" || len(id) > 255 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			c == '.' || c == '_' || c == '-' || c == ':' || c == '/'
		if !ok {
			return false
		}
	}
	return true
}

// unwrap returns the data key a sealed header carries.
func (k *keyring) unwrap(h *sealHeader) ([]byte, error) {
	if h.keyVersion == 0 {
		return nil, fmt.Errorf("it is sealed under key %q of a KMS (key version 0): a keyring cannot unwrap it", h.keyID)
	}
	versions, ok := k.keys[h.keyID]
	if !ok {
		return nil, fmt.Errorf("the keyring %s has no key %q", k.path, h.keyID)
	}
	kek, ok := versions[h.keyVersion]
	if !ok {
		return nil, fmt.Errorf("key %q of the keyring %s has no version %d (retired?)", h.keyID, k.path, h.keyVersion)
	}
	refused := fmt.Errorf("the data key does not unwrap with key %q version %d: altered or not its own", h.keyID, h.keyVersion)
	if len(h.wrapped) != wrapNonce+32+sealTag {
		return nil, refused
	}
	gcm, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	aad := make([]byte, 0, len(keyringAAD)+2+len(h.keyID)+4)
	aad = append(aad, keyringAAD...)
	aad = append(aad, 0)
	aad = append(aad, h.keyID...)
	aad = append(aad, 0)
	aad = binary.BigEndian.AppendUint32(aad, h.keyVersion)
	key, err := gcm.Open(nil, h.wrapped[:wrapNonce], h.wrapped[wrapNonce:], aad)
	if err != nil || len(key) != 32 {
		return nil, refused
	}
	return key, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealHeader is a sealed payload's header.
type sealHeader struct {
	keyID       string
	keyVersion  uint32
	wrapped     []byte
	noncePrefix [sealNoncePrefix]byte
}

var errSealTruncated = errors.New("the sealed payload ends inside its header")

// readSealHeader reads the header at the start of r (and nothing after it).
func readSealHeader(r io.Reader) (*sealHeader, error) {
	take := func(n int) ([]byte, error) {
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, errSealTruncated
			}
			return nil, err
		}
		return b, nil
	}
	b, err := take(len(sealMagic) + 1)
	if err != nil {
		return nil, err
	}
	if string(b[:len(sealMagic)]) != sealMagic {
		return nil, errors.New("not an at-rest sealed payload (bad magic)")
	}
	if b[len(sealMagic)] != sealFormat {
		return nil, fmt.Errorf("sealed payload format version %d is not known to this client", b[len(sealMagic)])
	}
	var h sealHeader
	if b, err = take(1); err != nil {
		return nil, err
	}
	if b, err = take(int(b[0])); err != nil {
		return nil, err
	}
	h.keyID = string(b)
	if !validSealKeyID(h.keyID) {
		return nil, errors.New("the sealed payload's header is malformed: bad key id")
	}
	if b, err = take(4); err != nil {
		return nil, err
	}
	h.keyVersion = binary.BigEndian.Uint32(b)
	if b, err = take(2); err != nil {
		return nil, err
	}
	m := int(binary.BigEndian.Uint16(b))
	if m == 0 || m > sealMaxWrapped {
		return nil, errors.New("the sealed payload's header is malformed: wrapped key length")
	}
	if h.wrapped, err = take(m); err != nil {
		return nil, err
	}
	if b, err = take(4); err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint32(b) != sealChunk {
		return nil, errors.New("the sealed payload's header is malformed: chunk size")
	}
	if b, err = take(sealNoncePrefix); err != nil {
		return nil, err
	}
	copy(h.noncePrefix[:], b)
	return &h, nil
}

// sealedReader decrypts the chunks after a sealed header as they are read from src,
// holding about two chunks. It never returns a byte that did not authenticate: a chunk that
// was altered, moved, dropped or cut off is an error.
type sealedReader struct {
	src     io.Reader
	gcm     cipher.AEAD
	prefix  [sealNoncePrefix]byte
	aad     []byte
	counter uint64
	in      []byte // sealed bytes read ahead (at most one chunk and one byte)
	out     []byte // opened plaintext not yet returned
	plain   []byte // out's backing buffer
	eof     bool   // src has ended
	done    bool   // the last chunk opened
	err     error
}

// openSealed reads the header from src, unwraps its data key with ring and returns the
// reader of its plaintext.
func openSealed(ring *keyring, src io.Reader) (io.Reader, error) {
	h, err := readSealHeader(src)
	if err != nil {
		return nil, err
	}
	key, err := ring.unwrap(h)
	if err != nil {
		return nil, err
	}
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	aad := make([]byte, 0, len(sealMagic)+1+4+sealNoncePrefix)
	aad = append(aad, sealMagic...)
	aad = append(aad, sealFormat)
	aad = binary.BigEndian.AppendUint32(aad, sealChunk)
	aad = append(aad, h.noncePrefix[:]...)
	return &sealedReader{src: src, gcm: gcm, prefix: h.noncePrefix, aad: aad,
		in: make([]byte, 0, sealChunk+sealTag+1), plain: make([]byte, 0, sealChunk)}, nil
}

func (s *sealedReader) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.done {
			return 0, io.EOF
		}
		s.err = s.next()
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	return n, nil
}

// next opens one more chunk into out: a full chunk once a byte past it shows it is not the
// last, else (src ended) the rest as the flagged last one.
func (s *sealedReader) next() error {
	full := sealChunk + sealTag
	for !s.eof && len(s.in) <= full {
		n, err := s.src.Read(s.in[len(s.in):cap(s.in)])
		s.in = s.in[:len(s.in)+n]
		if err == io.EOF {
			s.eof = true
		} else if err != nil {
			return err
		}
	}
	last := len(s.in) <= full
	chunk := s.in
	if !last {
		chunk = s.in[:full]
	}
	if s.counter > math.MaxUint32 {
		return s.altered()
	}
	var nonce [12]byte
	copy(nonce[:], s.prefix[:])
	binary.BigEndian.PutUint32(nonce[sealNoncePrefix:], uint32(s.counter))
	if last {
		nonce[11] = 1
	}
	if len(chunk) < sealTag {
		return s.altered()
	}
	plain, err := s.gcm.Open(s.plain[:0], nonce[:], chunk, s.aad)
	if err != nil {
		return s.altered()
	}
	s.out = plain
	s.counter++
	if last {
		s.done = true
		s.in = s.in[:0]
	} else {
		rest := copy(s.in, s.in[full:])
		s.in = s.in[:rest]
	}
	return nil
}

func (s *sealedReader) altered() error {
	return fmt.Errorf("the sealed payload failed authentication at chunk %d: it was altered, truncated or reordered", s.counter)
}

// openSealedManifest opens a SealedManifest's "sealed" bytes into the plain manifest's JSON.
func openSealedManifest(ring *keyring, key, sealed string) ([]byte, error) {
	if ring == nil {
		return nil, fmt.Errorf("it is sealed at rest under key %q and this client has no keyring for it (Options.SnapshotKeyring)", key)
	}
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil {
		return nil, fmt.Errorf("sealed: %w", err)
	}
	r, err := openSealed(ring, bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("sealed at rest under key %q: %w", key, err)
	}
	plain, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("sealed at rest under key %q: %w", key, err)
	}
	return plain, nil
}

// sealedObject is an object opened as it streams, closing its source.
type sealedObject struct {
	io.Reader
	src io.Closer
}

func (o sealedObject) Close() error { return o.src.Close() }
