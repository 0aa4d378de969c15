package module

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A few Kustom endpoints carry absolute API URLs inside their JSON bodies, and
// Klarna's SDKs follow them just as they follow Location. These are the only
// bodies the shim reads; every other body streams through untouched.
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

// BodyRewriteFor returns the body rewriting an endpoint needs, or nil.
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

		var leaf bool
		var nested bodyFields
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
		switch {
		case leaf && len(val) > 0 && val[0] == '"':
			var s string
			if err := json.Unmarshal(val, &s); err == nil {
				if ns, ok := fn(s); ok && ns != s {
					writeJSONString(&out, ns)
					changed++
					continue
				}
			}
			out.Write(val)
		case len(nested) > 0 && len(val) > 0 && val[0] == '{':
			sub, n, err := rewriteObject(val, nested, fn)
			if err != nil {
				return nil, 0, err
			}
			if n == 0 {
				sub = val
			}
			out.Write(sub)
			changed += n
		default:
			out.Write(val)
		}
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

// writeJSONString encodes s as a JSON string without HTML escaping, so that
// a URL's & stays & as the upstream wrote it.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	b.Truncate(b.Len() - 1) // Encode's newline
}
