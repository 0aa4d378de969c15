package module

import "bytes"

// framing is what requestFraming could tell of the bytes it was given.
type framing int

const (
	framed     framing = iota // a whole request head: its length and its body's are known
	incomplete                // the head has not all arrived yet
	unframable                // a form kustom_drain does not follow: chunked, conflicting lengths, folded lines
)

// requestFraming reads the head of the HTTP/1.x request at the start of b,
// as net/http's server parses it, and returns the head's length (blank line
// included, and any empty lines before the request line, which net/http
// skips after a POST) and the body's, from Content-Length (none: 0, as for
// any HTTP/1.1 request without a body). kustom_drain uses it to know which
// bytes it has seen belong to the next request. Anything it cannot be sure
// of is unframable, and the connection is then never handed over.
func requestFraming(b []byte) (headLen int, bodyLen int64, f framing) {
	i := 0
	for i < len(b) && (b[i] == '\r' || b[i] == '\n') {
		i++
	}
	first := true
	seenLength := false
	for {
		nl := bytes.IndexByte(b[i:], '\n')
		if nl < 0 {
			return 0, 0, incomplete
		}
		line := b[i : i+nl]
		i += nl + 1
		line = bytes.TrimSuffix(line, []byte("\r"))
		if first {
			if bytes.Count(line, []byte(" ")) != 2 {
				return 0, 0, unframable
			}
			first = false
			continue
		}
		if len(line) == 0 {
			return i, bodyLen, framed
		}
		if line[0] == ' ' || line[0] == '\t' {
			return 0, 0, unframable // obsolete line folding
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			return 0, 0, unframable
		}
		switch {
		case bytes.EqualFold(name, headerTransferEncoding):
			return 0, 0, unframable
		case bytes.EqualFold(name, headerContentLength):
			n, ok := parseLength(bytes.Trim(value, " \t"))
			if !ok || seenLength && n != bodyLen {
				return 0, 0, unframable
			}
			bodyLen, seenLength = n, true
		}
	}
}

var (
	headerTransferEncoding = []byte("Transfer-Encoding")
	headerContentLength    = []byte("Content-Length")
)

// parseLength reads a Content-Length value: decimal digits only, as net/http
// accepts it (no sign), without allocating.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}
