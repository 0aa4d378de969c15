package module

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// A few Kustom endpoints carry absolute API URLs inside their JSON bodies, and
// Klarna's SDKs follow them just as they follow Location. These are the only
// bodies the shim changes; every other body passes untouched (read first only
// to bound a chunked one, or held for a request that may be retried).
//
// Browser-facing URLs (redirect_url, qr_code_url, the scripts in
// html_snippet) are not API URLs and are never rewritten.

// bodyFields names the JSON fields to rewrite in one direction, as paths from
// the top-level object.
type bodyFields [][]string

// bodyRewrite is what to rewrite for one endpoint.
type bodyRewrite struct {
	endpoint string     // for logs
	request  bodyFields // client → upstream
	response bodyFields // upstream → client
}

var (
	hppSessionURLs = bodyFields{{"session_url"}, {"distribution_url"}, {"manual_identification_check_url"}}
	paginationURLs = bodyFields{{"pagination", "next"}, {"pagination", "prev"}}
)

// bodyRewriteFor returns the body rewriting an endpoint needs, or nil.
func bodyRewriteFor(method, path string) *bodyRewrite {
	switch {
	case method == "POST" && path == "/hpp/v1/sessions":
		return &bodyRewrite{endpoint: "POST /hpp/v1/sessions", request: bodyFields{{"payment_session_url"}}, response: hppSessionURLs}
	case method == "GET" && strings.HasPrefix(path, "/hpp/v1/sessions/") && !strings.Contains(path[len("/hpp/v1/sessions/"):], "/"):
		return &bodyRewrite{endpoint: "GET /hpp/v1/sessions/{id}", response: hppSessionURLs}
	case method == "GET" && (path == "/settlements/v1/payouts" || path == "/settlements/v1/transactions"):
		return &bodyRewrite{endpoint: "GET " + path, response: paginationURLs}
	}
	return nil
}

// errNotJSONObject marks a body that is not the JSON object expected.
var errNotJSONObject = errors.New("not a JSON object")

// RewriteJSONFields applies fn to the string values at fields of the JSON
// object in body and returns the new body and how many values changed. Only
// those values are re-encoded: every other value keeps its exact bytes
// (numbers keep their precision, unknown fields stay), and keys keep their
// order; only insignificant white space between tokens is dropped. A body
// that is not a JSON object is an error (the caller passes it unchanged).
func RewriteJSONFields(body []byte, fields bodyFields, fn func(string) (string, bool)) ([]byte, int, error) {
	out, n, err := rewriteObject(body, fields, fn)
	if err != nil {
		return body, 0, err
	}
	if n == 0 {
		return body, 0, nil
	}
	return out, n, nil
}

func rewriteObject(raw []byte, fields bodyFields, fn func(string) (string, bool)) ([]byte, int, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, 0, errNotJSONObject
	}
	var out bytes.Buffer
	out.Grow(len(raw))
	out.WriteByte('{')
	changed := 0
	for first := true; dec.More(); first = false {
		keyTok, err := dec.Token()
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %v", errNotJSONObject, err)
		}
		key := keyTok.(string)
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, 0, fmt.Errorf("%w: %v", errNotJSONObject, err)
		}
		if !first {
			out.WriteByte(',')
		}
		writeJSONString(&out, key)
		out.WriteByte(':')
		leaf, nested := fields.under(key)
		n, err := rewriteMember(&out, val, leaf, nested, fn)
		if err != nil {
			return nil, 0, err
		}
		changed += n
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, 0, fmt.Errorf("%w: %v", errNotJSONObject, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, fmt.Errorf("%w: data after the object", errNotJSONObject)
	}
	out.WriteByte('}')
	return out.Bytes(), changed, nil
}

// under splits fields for one member key: whether the key itself is a field
// to rewrite (leaf), and the paths below it.
func (fields bodyFields) under(key string) (leaf bool, nested bodyFields) {
	for _, f := range fields {
		if f[0] != key {
			continue
		}
		if len(f) == 1 {
			leaf = true
		} else {
			nested = append(nested, f[1:])
		}
	}
	return leaf, nested
}

// rewriteMember writes one member's value: a rewritten URL string for a leaf
// field, a rewritten object for a path through it, otherwise the bytes as
// they came. It returns how many URLs changed.
func rewriteMember(out *bytes.Buffer, val json.RawMessage, leaf bool, nested bodyFields, fn func(string) (string, bool)) (int, error) {
	switch {
	case leaf && len(val) > 0 && val[0] == '"':
		var s string
		if err := json.Unmarshal(val, &s); err == nil {
			if ns, ok := fn(s); ok && ns != s {
				writeJSONString(out, ns)
				return 1, nil
			}
		}
	case len(nested) > 0 && len(val) > 0 && val[0] == '{':
		sub, n, err := rewriteObject(val, nested, fn)
		if err != nil {
			return 0, err
		}
		if n > 0 {
			out.Write(sub)
			return n, nil
		}
	}
	out.Write(val)
	return 0, nil
}

// writeJSONString encodes s as a JSON string without HTML escaping, so that
// a URL's & stays & as the upstream wrote it.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	b.Truncate(b.Len() - 1) // Encode's newline
}

// rewriteRequestBody points the API URLs in a request body at the upstream:
// URLs on the client's origin (a sidecar's http://localhost:8080) and
// absolute Klarna API URLs the app has hard-coded. The body was already
// bounded by limitRequestBody.
func (h *Handler) rewriteRequestBody(r *http.Request, bodies *bodyRewrite, o Origins) Reason {
	if len(bodies.request) == 0 || r.Body == nil || r.Body == http.NoBody {
		return ""
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return ReasonBadRequestBody
	}
	out := body
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		h.noticeOnce(bodies.endpoint+" request", "encoded request body ("+enc+") passed unchanged")
	} else {
		rewritten, _, err := RewriteJSONFields(body, bodies.request, func(u string) (string, bool) {
			if nu, ok := o.ToUpstream(u); ok {
				return nu, true
			}
			return h.hosts.RewriteToKustom(u)
		})
		if err != nil {
			h.noticeOnce(bodies.endpoint+" request", err.Error())
		} else {
			out = rewritten
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(out))
	r.ContentLength = int64(len(out))
	r.Header.Set("Content-Length", strconv.Itoa(len(out)))
	return ""
}

// noticed holds the notices already logged: a body that is not the JSON
// expected is logged once per endpoint and kind, not once per request.
var noticed sync.Map

func (h *Handler) noticeOnce(where, what string) {
	if _, seen := noticed.LoadOrStore(where, struct{}{}); seen {
		return
	}
	h.logger.Warn("body passed unchanged: not the JSON expected (logged once per endpoint)",
		zap.String("endpoint", where), zap.String("problem", what))
}
