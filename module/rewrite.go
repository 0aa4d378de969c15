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

// Origins is the pair of origins between which absolute API URLs are
// translated: Upstream is where the request went (https://api.kustom.co),
// Client is the origin the client addressed (http://localhost:8080 for a
// sidecar, https://api.klarna.com behind DNS). Klarna's SDKs store the
// Location of a created order and send their next call there, so a URL that
// escaped to the upstream origin would take the app around the shim.
type Origins struct {
	Upstream string
	Client   string
}

// ClientOrigin is the origin r was addressed to, as the client wrote it, or
// "" for a request without a Host (HTTP/1.0), whose URLs become relative.
func ClientOrigin(r *http.Request) string {
	if r.Host == "" {
		return ""
	}
	if r.TLS != nil {
		return "https://" + r.Host
	}
	return "http://" + r.Host
}

// ToClient rewrites u from the upstream origin to the client origin.
func (o Origins) ToClient(u string) (string, bool) { return RewriteOrigin(u, o.Upstream, o.Client) }

// ToUpstream rewrites u from the client origin to the upstream origin.
func (o Origins) ToUpstream(u string) (string, bool) { return RewriteOrigin(u, o.Client, o.Upstream) }

// RewriteOrigin replaces the origin from at the start of the absolute URL u
// with to. Scheme and host compare case-insensitively and a default port
// written out (:443, :80) matches its absence, as URL equivalence has it. A
// URL on any other origin, a relative URL and a URL whose host merely starts
// with from's host (api.kustom.co.evil.example) are left alone.
func RewriteOrigin(u, from, to string) (string, bool) {
	scheme, host, ok := strings.Cut(from, "://")
	if !ok || len(u) < len(scheme)+3 || !strings.EqualFold(u[:len(scheme)+3], scheme+"://") {
		return u, false
	}
	defaultPort := ":443"
	if strings.EqualFold(scheme, "http") {
		defaultPort = ":80"
	}
	// Host: api.klarna.com:443 and Host: api.klarna.com are one origin.
	if len(host) > len(defaultPort) && strings.HasSuffix(host, defaultPort) {
		host = host[:len(host)-len(defaultPort)]
	}
	rest := u[len(scheme)+3:]
	if len(rest) < len(host) || !strings.EqualFold(rest[:len(host)], host) {
		return u, false
	}
	rest = rest[len(host):]
	if !strings.Contains(host, ":") {
		rest = strings.TrimPrefix(rest, defaultPort)
	}
	if rest != "" && rest[0] != '/' && rest[0] != '?' && rest[0] != '#' {
		return u, false
	}
	if to == "" {
		if strings.HasPrefix(rest, "//") {
			// As a relative reference "//x/…" would name another host.
			return u, false
		}
		if rest == "" || rest[0] != '/' {
			rest = "/" + rest // a relative reference must still name a path
		}
	}
	return to + rest, true
}

// urlHeaders are the response headers that carry absolute API URLs.
var urlHeaders = []string{"Location", "Content-Location"}

// rewriteHeaderURLs applies o.ToClient to every URL-carrying header of h.
func rewriteHeaderURLs(h http.Header, o Origins) {
	for _, name := range urlHeaders {
		vals := h[name]
		for i, v := range vals {
			if nv, ok := o.ToClient(v); ok {
				vals[i] = nv
			}
		}
	}
}

// originWriter rewrites URL headers as the upstream's response header is
// written, and remembers whether anything was written so that the handler
// knows whether an upstream error can still be answered with a refusal. On
// the few endpoints whose JSON carries API URLs it holds the body back
// (within maxResponseRewrite) so that finish can rewrite it.
type originWriter struct {
	caddyhttp.ResponseWriterWrapper // by value: one allocation less per request
	origins                         Origins
	wroteHeader                     bool
	status                          int
	headerAt                        time.Time // when the upstream's response header was written

	req       *http.Request // whose ClientOrigin origins.Client is, once needed
	clientSet bool

	rewrite   *bodyRewrite // nil: stream everything
	buffering bool
	tooLarge  bool
	buf       bytes.Buffer
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

func (w *originWriter) WriteHeader(code int) {
	stripShimError(w.Header())
	if code >= 200 && !w.wroteHeader {
		w.wroteHeader = true
		w.status = code
		w.headerAt = time.Now()
		if h := w.Header(); len(h["Location"]) > 0 || len(h["Content-Location"]) > 0 {
			rewriteHeaderURLs(h, w.clientOrigins())
		}
		if w.rewrite != nil && code >= 200 && code < 300 && rewritableBody(w.Header()) {
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
