package module

import "bytes"

// framing is what requestFraming could tell of the bytes it was given.
type framing int

const (
	framed     framing = iota // a whole request head: its length and its body's are known
	incomplete                // the head has not all arrived yet
	unframable                // a form kustom_drain does not follow: chunked, conflicting lengths, folded lines
)

// framedRequest is where a request that requestFraming framed ends.
type framedRequest struct {
	headLen int   // the head, blank line included, and the CR/LF before it that net/http drops after a POST
	bodyLen int64 // from Content-Length; none: 0, as for any HTTP/1.1 request without a body
	post    bool  // its method is POST: net/http may drop CR/LF before the request that follows
}

// requestFraming reads the head of the HTTP/1.x request at the start of b,
// as net/http's server parses it, and returns where the request ends.
// afterPOST: the request on the connection before this one was a POST, so
// the server first drops the CR and LF bytes among b's first four
// (crlfAfterPOST). kustom_drain uses it to know which bytes it has seen
// belong to the next request. Anything it cannot be sure of is unframable,
// and the connection is then never handed over.
func requestFraming(b []byte, afterPOST bool) (r framedRequest, f framing) {
	i := 0
	if afterPOST {
		n, known := crlfAfterPOST(b)
		if !known {
			return framedRequest{}, incomplete
		}
		i = n
	}
	first := true
	seenLength := false
	for {
		nl := bytes.IndexByte(b[i:], '\n')
		if nl < 0 {
			return framedRequest{}, incomplete
		}
		line := b[i : i+nl]
		i += nl + 1
		line = bytes.TrimSuffix(line, []byte("\r"))
		if first {
			if bytes.Count(line, []byte(" ")) != 2 {
				return framedRequest{}, unframable
			}
			// net/http compares the method as sent: "post" is not POST.
			r.post = bytes.HasPrefix(line, []byte("POST "))
			first = false
			continue
		}
		if len(line) == 0 {
			r.headLen = i
			return r, framed
		}
		if line[0] == ' ' || line[0] == '\t' {
			return framedRequest{}, unframable // obsolete line folding
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok || len(name) == 0 || bytes.ContainsAny(name, " \t") {
			return framedRequest{}, unframable
		}
		switch {
		case bytes.EqualFold(name, headerTransferEncoding):
			return framedRequest{}, unframable
		case bytes.EqualFold(name, headerContentLength):
			n, ok := parseLength(bytes.Trim(value, " \t"))
			if !ok || seenLength && n != r.bodyLen {
				return framedRequest{}, unframable
			}
			r.bodyLen, seenLength = n, true
		}
	}
}

// crlfAfterPOST is how many bytes at the start of b net/http's server drops
// before it reads the request that follows a POST: the CR and LF bytes
// among the first four it peeks (RFC 7230 section 3.5 lets a server ignore
// the extra CRLF some clients send after a POST body). After any other
// method it drops none, and such a CRLF is a malformed request (400).
// known is false while b is fewer than four bytes, all CR or LF: the bytes
// still to come may be more of them.
func crlfAfterPOST(b []byte) (n int, known bool) {
	for n < len(b) && n < 4 && (b[n] == '\r' || b[n] == '\n') {
		n++
	}
	return n, n < len(b) || n == 4
}

// h2PrefaceStart is how the HTTP/2 client preface ("PRI * HTTP/2.0\r\n\r\n
// SM\r\n\r\n") begins; a request on HTTP/1.1 that begins so is never handed
// over (see drainConn.settleStart).
var h2PrefaceStart = []byte("PRI ")

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
