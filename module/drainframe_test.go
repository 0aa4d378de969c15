package module

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestRequestFraming(t *testing.T) {
	get := "GET /checkout/v3/orders/o-1 HTTP/1.1\r\nHost: localhost:8080\r\nAuthorization: Basic eDp5\r\n\r\n"
	post := "POST /checkout/v3/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
	cases := []struct {
		name    string
		in      string
		head    int
		body    int64
		framing framing
	}{
		{"GET, no body", get, len(get), 0, framed},
		{"GET, and the next request's first bytes", get + "POST /x", len(get), 0, framed},
		{"POST with Content-Length", post + `{"order_amount":100}`, len(post), 20, framed},
		{"head not all there", post[:40], 0, 0, incomplete},
		{"nothing yet", "", 0, 0, incomplete},
		{"bare LF line ends", "GET / HTTP/1.1\nHost: a\n\n", len("GET / HTTP/1.1\nHost: a\n\n"), 0, framed},
		{"empty lines before (after a POST)", "\r\n" + get, 2 + len(get), 0, framed},
		{"lower-case content-length", "PUT /a HTTP/1.1\r\ncontent-length:  7 \r\n\r\n", len("PUT /a HTTP/1.1\r\ncontent-length:  7 \r\n\r\n"), 7, framed},
		{"same Content-Length twice", "POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", len("POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"), 3, framed},
		{"chunked", "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 0, 0, unframable},
		{"two different lengths", "POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 0, 0, unframable},
		{"negative length", "POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 0, 0, unframable},
		{"folded header line", "GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n", 0, 0, unframable},
		{"space before the colon", "GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\n", 0, 0, unframable},
		{"no colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", 0, 0, unframable},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", len("PRI * HTTP/2.0\r\n\r\n"), 0, framed},
		{"not a request line", "HELLO\r\n\r\n", 0, 0, unframable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			head, body, f := requestFraming([]byte(tc.in))
			if f != tc.framing || head != tc.head || body != tc.body {
				t.Errorf("requestFraming(%q) = %d, %d, %v; want %d, %d, %v", tc.in, head, body, f, tc.head, tc.body, tc.framing)
			}
		})
	}
}

// TestRequestFramingAgreesWithNetHTTP: where requestFraming says a request
// is framed, net/http's own parser reads the same head and body and leaves
// the same bytes for the next request.
func TestRequestFramingAgreesWithNetHTTP(t *testing.T) {
	next := "GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, req := range []string{
		"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"POST /a HTTP/1.1\nHost: a\ncontent-length: 2\n\nhi",
		"DELETE /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
	} {
		head, body, f := requestFraming([]byte(req + next))
		if f != framed {
			t.Errorf("%q: %v", req, f)
			continue
		}
		br := bufio.NewReader(strings.NewReader(req + next))
		r, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("%q: %v", req, err)
		}
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(r.Body)
		if int64(b.Len()) != body || r.ContentLength != body {
			t.Errorf("%q: body %d (Content-Length %d), requestFraming says %d", req, b.Len(), r.ContentLength, body)
		}
		rest := new(bytes.Buffer)
		_, _ = rest.ReadFrom(br)
		if rest.String() != next || head+int(body) != len(req) {
			t.Errorf("%q: net/http leaves %q, requestFraming ends the request at %d of %d", req, rest, head+int(body), len(req))
		}
	}
}

// FuzzRequestFraming: whatever the bytes, when requestFraming says a
// request is framed and net/http reads a request from the same bytes, both
// agree on where the request ends; kustom_drain hands the rest to the new
// config as the next call.
func FuzzRequestFraming(f *testing.F) {
	for _, seed := range []string{
		"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\n",
		"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST",
		"POST /a HTTP/1.1\nHost: a\ncontent-length: 2\n\nhi",
		"\r\nPUT /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET /a HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		head, body, fr := requestFraming(in)
		if fr != framed {
			return
		}
		if head <= 0 || head > len(in) || body < 0 {
			t.Fatalf("requestFraming(%q) = %d, %d", in, head, body)
		}
		br := bufio.NewReader(bytes.NewReader(in))
		r, err := http.ReadRequest(br)
		if err != nil || r.ContentLength < 0 {
			return // net/http refuses it, or frames it otherwise: the server answers 400 and closes
		}
		if r.ContentLength != body {
			t.Fatalf("%q: net/http reads a body of %d, requestFraming %d", in, r.ContentLength, body)
		}
		n, _ := io.Copy(io.Discard, r.Body)
		rest, _ := io.ReadAll(br)
		if want := in[min(len(in), head+int(n)):]; n == body && !bytes.Equal(rest, want) {
			t.Fatalf("%q: net/http leaves %q after the request, requestFraming %q", in, rest, want)
		}
	})
}
