package module

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// originWriter is the ResponseWriter the upstream's response goes through.
// It rewrites URL headers as the response header is written, and keeps
// track of what has reached the client, which outcome reports to the
// handler: whether an upstream error can still be answered with a refusal.
// On the few endpoints whose JSON carries API URLs it holds the body back
// (within MaxResponseRewrite) so that finish can rewrite it.
type originWriter struct {
	caddyhttp.ResponseWriterWrapper // by value: one allocation less per request
	origins                         Origins

	// What outcome reports. The handler reads wroteHeader, status,
	// headerAt, buffering and tooLarge directly until it switches to
	// outcome; new code should call outcome instead.
	wroteHeader bool      // the upstream wrote a final (>= 200) header
	status      int       // that header's status
	headerAt    time.Time // when the upstream's response header was written

	req       *http.Request // whose ClientOrigin origins.Client is, once needed
	clientSet bool

	rewrite   *bodyRewrite // nil: stream everything
	buffering bool         // the response is held back for finish
	tooLarge  bool         // the held-back body is over MaxResponseRewrite
	buf       bytes.Buffer
}

// writeOutcome is what the upstream's response came to, as far as the
// handler needs to know: for the duration metric, the switch evidence, the
// requests counter and whether it may still refuse.
type writeOutcome struct {
	// Status is the final status the upstream wrote (200 or above: a 1xx
	// does not count), or 0 when it wrote none.
	Status int
	// HeaderAt is when the upstream wrote that status; zero when Status is 0.
	HeaderAt time.Time
	// Started: the response header has been passed on to the client, so
	// the shim can no longer answer with a refusal; an upstream error now
	// can only cut the response short. A held-back body starts only when
	// finish writes it.
	Started bool
	// TooLarge: a body that had to be rewritten is over MaxResponseRewrite,
	// as sent or once decoded. Nothing of it has reached the client
	// (Started is false), so the handler refuses with
	// ReasonResponseTooLarge.
	TooLarge bool
}

// outcome reports what the response came to so far. The handler asks once
// the proxy has returned, and again after finish, which may start the
// response or find it too large.
func (w *originWriter) outcome() writeOutcome {
	return writeOutcome{
		Status:   w.status,
		HeaderAt: w.headerAt,
		Started:  w.wroteHeader && !w.buffering && !w.tooLarge,
		TooLarge: w.tooLarge,
	}
}

// MaxResponseRewrite bounds the JSON bodies held in memory for rewriting.
// HPP sessions are a few kB and a settlement page of hundreds of payouts well
// under 1 MB; a larger body is refused rather than passed with Kustom URLs.
const MaxResponseRewrite = 8 << 20

func newOriginWriter(w http.ResponseWriter, o Origins, rw *bodyRewrite, r *http.Request) *originWriter {
	ow := &originWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, origins: o, req: r,
		clientSet: o.Client != "" || r == nil}
	if rw != nil && len(rw.response) > 0 {
		ow.rewrite = rw
	}
	return ow
}

// WriteHeader passes a 1xx on and takes the first final status as the
// response's, with its URL headers rewritten; a held-back response keeps
// its header back too, for finish to write, and ignores any later call.
func (w *originWriter) WriteHeader(code int) {
	stripShimError(w.Header())
	if w.buffering {
		return // written by finish; a second status must not reach the client first
	}
	if code >= 200 && !w.wroteHeader {
		w.wroteHeader = true
		w.status = code
		w.headerAt = time.Now()
		if h := w.Header(); len(h["Location"]) > 0 || len(h["Content-Location"]) > 0 {
			rewriteHeaderURLs(h, w.clientOrigins())
		}
		if w.rewrite != nil && code < 300 && rewritableBody(w.Header()) {
			w.buffering = true
			if cl, err := strconv.ParseInt(w.Header().Get("Content-Length"), 10, 64); err == nil && cl > MaxResponseRewrite {
				w.tooLarge = true
			}
			return // written by finish
		}
	}
	w.ResponseWriterWrapper.WriteHeader(code)
}

// stripShimError removes an upstream's own Kustom-Shim-Error from h, as a
// header and as an announced trailer: apps and monitoring read that header
// as "the shim refused, nothing reached Kustom", which must stay true
// whatever an upstream (or something posing as one) sends. The shim's own
// refusals are written past the originWriter and keep it.
func stripShimError(h http.Header) {
	delete(h, ErrorHeader)
	if len(h["Trailer"]) == 0 {
		return
	}
	var kept []string
	for _, v := range h["Trailer"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" && !strings.EqualFold(name, ErrorHeader) {
				kept = append(kept, name)
			}
		}
	}
	if len(kept) == 0 {
		delete(h, "Trailer")
		return
	}
	h["Trailer"] = []string{strings.Join(kept, ", ")}
}

// clientOrigins is origins with the client origin filled in, worked out on
// first use: most responses carry no URL to rewrite.
func (w *originWriter) clientOrigins() Origins {
	if !w.clientSet {
		w.origins.Client = ClientOrigin(w.req)
		w.clientSet = true
	}
	return w.origins
}

// rewritableBody: JSON, and an encoding finish can read.
func rewritableBody(h http.Header) bool {
	ct := strings.ToLower(h.Get("Content-Type"))
	if !strings.Contains(ct, "json") {
		return false
	}
	switch strings.ToLower(h.Get("Content-Encoding")) {
	case "", "identity", "gzip":
		return true
	}
	return false
}

// Write passes b on, or holds it back for finish, refusing past
// MaxResponseRewrite (errResponseTooLarge: the proxy then aborts).
func (w *originWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.buffering {
		if w.tooLarge || w.buf.Len()+len(b) > MaxResponseRewrite {
			w.tooLarge = true
			return 0, errResponseTooLarge
		}
		return w.buf.Write(b)
	}
	return w.ResponseWriterWrapper.Write(b)
}

var errResponseTooLarge = fmt.Errorf("response body over %d bytes cannot be rewritten", MaxResponseRewrite)

// ReadFrom is Write for the proxy's copy loop: a streamed body keeps the
// underlying writer's fast path.
func (w *originWriter) ReadFrom(r io.Reader) (int64, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.buffering {
		return io.Copy(writerOnly{w}, r)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError keeps a held-back response held back; otherwise it flushes.
func (w *originWriter) FlushError() error {
	if w.buffering {
		return nil
	}
	return http.NewResponseController(&w.ResponseWriterWrapper).Flush()
}

// writerOnly hides ReadFrom, so that io.Copy into a held-back response goes
// through Write and its limit rather than back into ReadFrom.
type writerOnly struct{ io.Writer }

// finish writes a held-back body, rewritten. It reports ReasonResponseTooLarge
// when the body was over the limit, as sent or once decoded (a gzip body of
// a few kB can decode to gigabytes): nothing has reached the client then, so
// the handler can still refuse. A body that is not the JSON expected goes out
// as it came, and notice says so (once per endpoint, by the caller).
//
// finish runs once the proxy is done, so it also drops a Kustom-Shim-Error
// the upstream sent as a trailer, which the proxy copies into the header
// map after the body (see stripShimError): a trailer announced in the
// header was already struck out there, and an unannounced one would go out
// under http.TrailerPrefix or, on a held-back body, as a header.
func (w *originWriter) finish() (reason Reason, notice string) {
	h := w.Header()
	delete(h, ErrorHeader)
	delete(h, http.TrailerPrefix+ErrorHeader)
	if !w.buffering {
		return "", ""
	}
	w.buffering = false
	if w.tooLarge {
		return ReasonResponseTooLarge, ""
	}
	body := w.buf.Bytes()
	plain, decodeErr := decodeBody(body, h.Get("Content-Encoding"))
	if errors.Is(decodeErr, errResponseTooLarge) {
		// Small on the wire, too large decoded: as unrewritable as a plain
		// body over the limit, and passing it on would hand the client
		// Kustom's URLs. Nothing was written yet, so the handler refuses.
		w.tooLarge = true
		return ReasonResponseTooLarge, ""
	}
	var out []byte
	var err error = decodeErr
	if err == nil {
		out, _, err = RewriteJSONFields(plain, w.rewrite.response, w.clientOrigins().ToClient)
	}
	if err != nil {
		notice = err.Error()
		out = body // unchanged, as the upstream sent it
	} else {
		h.Del("Content-Encoding")
	}
	h.Set("Content-Length", strconv.Itoa(len(out)))
	w.ResponseWriterWrapper.WriteHeader(w.status)
	_, _ = w.ResponseWriterWrapper.Write(out)
	return "", notice
}

// decodeBody is b decoded from encoding: gzip is decompressed, within
// MaxResponseRewrite (errResponseTooLarge past it), and anything else is
// returned as it is (rewritableBody lets only identity and gzip through).
func decodeBody(b []byte, encoding string) ([]byte, error) {
	if !strings.EqualFold(encoding, "gzip") {
		return b, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("gzip body: %v", err)
	}
	out, err := io.ReadAll(io.LimitReader(zr, MaxResponseRewrite+1))
	if err != nil {
		return nil, fmt.Errorf("gzip body: %v", err)
	}
	if len(out) > MaxResponseRewrite {
		return nil, errResponseTooLarge
	}
	return out, nil
}
