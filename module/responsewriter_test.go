package module

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestOriginWriter(t *testing.T) {
	o := Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}
	const (
		loc     = "https://api.kustom.co/checkout/v3/orders/o1"
		wantLoc = "http://localhost:8080/checkout/v3/orders/o1"
	)

	t.Run("WriteHeader 201 rewrites Location", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, o, nil, nil)
		ow.Header().Set("Location", loc)
		ow.Header().Set("Content-Location", loc)
		ow.WriteHeader(http.StatusCreated)
		_, _ = ow.Write([]byte(`{"order_id":"o1"}`))
		res := rec.Result()
		if res.StatusCode != http.StatusCreated {
			t.Errorf("status %d, want 201", res.StatusCode)
		}
		if got := res.Header.Get("Location"); got != wantLoc {
			t.Errorf("Location %q, want %q", got, wantLoc)
		}
		if got := res.Header.Get("Content-Location"); got != wantLoc {
			t.Errorf("Content-Location %q, want %q", got, wantLoc)
		}
		if !ow.wroteHeader || ow.status != http.StatusCreated {
			t.Errorf("wroteHeader %v status %d, want true 201", ow.wroteHeader, ow.status)
		}
		if rec.Body.String() != `{"order_id":"o1"}` {
			t.Errorf("body %q", rec.Body)
		}
	})

	t.Run("Write without WriteHeader", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, o, nil, nil)
		ow.Header().Set("Location", loc)
		if ow.wroteHeader {
			t.Fatal("wroteHeader before anything was written")
		}
		if _, err := ow.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if !ow.wroteHeader || ow.status != http.StatusOK {
			t.Errorf("after Write: wroteHeader %v status %d, want true 200", ow.wroteHeader, ow.status)
		}
		res := rec.Result()
		if res.StatusCode != http.StatusOK || res.Header.Get("Location") != wantLoc {
			t.Errorf("status %d Location %q, want 200 %q", res.StatusCode, res.Header.Get("Location"), wantLoc)
		}
	})

	t.Run("ReadFrom without WriteHeader", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, o, nil, nil)
		ow.Header().Set("Location", loc)
		n, err := ow.ReadFrom(strings.NewReader("body"))
		if err != nil || n != 4 {
			t.Fatalf("ReadFrom = %d, %v", n, err)
		}
		if !ow.wroteHeader || rec.Result().Header.Get("Location") != wantLoc || rec.Body.String() != "body" {
			t.Errorf("after ReadFrom: wroteHeader %v Location %q body %q", ow.wroteHeader, rec.Result().Header.Get("Location"), rec.Body)
		}
	})

	t.Run("103 does not count as the response", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, o, nil, nil)
		ow.Header().Set("Link", "</app.js>; rel=preload")
		ow.WriteHeader(http.StatusEarlyHints)
		if ow.wroteHeader {
			t.Fatal("a 103 marked the response as written: an upstream error after it could no longer be refused")
		}
		ow.Header().Set("Location", loc)
		ow.WriteHeader(http.StatusCreated)
		if !ow.wroteHeader || ow.status != http.StatusCreated {
			t.Errorf("after 103 then 201: wroteHeader %v status %d", ow.wroteHeader, ow.status)
		}
		if got := ow.Header().Get("Location"); got != wantLoc {
			t.Errorf("Location after 103 then 201 = %q, want %q", got, wantLoc)
		}
	})

	t.Run("second WriteHeader does not change the status", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, Origins{Upstream: "https://api.kustom.co", Client: "https://api.klarna.com"}, nil, nil)
		ow.Header().Set("Location", loc)
		ow.WriteHeader(http.StatusCreated)
		ow.WriteHeader(http.StatusOK)
		if ow.status != http.StatusCreated || rec.Result().Header.Get("Location") != "https://api.klarna.com/checkout/v3/orders/o1" {
			t.Errorf("status %d Location %q", ow.status, rec.Result().Header.Get("Location"))
		}
	})
}

// TestOriginWriterOutcome: the one value the handler reads once the proxy
// has returned, and again after finish, in every state a response can be in.
func TestOriginWriterOutcome(t *testing.T) {
	o := Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}
	hpp := bodyRewriteFor(http.MethodGet, "/hpp/v1/sessions/s1") // a body held back for rewriting
	if hpp == nil {
		t.Fatal("GET /hpp/v1/sessions/{id} has no body rewrite: pick another endpoint for this test")
	}
	const body = `{"session_url":"https://api.kustom.co/hpp/v1/sessions/s1"}`
	jsonHeader := func(ow *originWriter) { ow.Header().Set("Content-Type", "application/json") }
	before := time.Now()

	t.Run("nothing written", func(t *testing.T) {
		ow := newOriginWriter(httptest.NewRecorder(), o, nil, nil)
		if got := ow.outcome(); got != (writeOutcome{}) {
			t.Errorf("outcome %+v, want the zero value", got)
		}
	})

	t.Run("1xx only", func(t *testing.T) {
		ow := newOriginWriter(httptest.NewRecorder(), o, nil, nil)
		ow.WriteHeader(http.StatusEarlyHints)
		if got := ow.outcome(); got != (writeOutcome{}) {
			t.Errorf("after a 103: outcome %+v, want the zero value (a refusal can still be written)", got)
		}
	})

	t.Run("streamed", func(t *testing.T) {
		ow := newOriginWriter(httptest.NewRecorder(), o, nil, nil)
		ow.WriteHeader(http.StatusCreated)
		got := ow.outcome()
		if got.Status != http.StatusCreated || !got.Started || got.TooLarge || got.HeaderAt.Before(before) {
			t.Errorf("outcome %+v, want 201, started, header time set", got)
		}
		if got != finishOutcome(t, ow) {
			t.Errorf("finish changed a streamed response's outcome")
		}
	})

	t.Run("held back, then written by finish", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, o, hpp, nil)
		jsonHeader(ow)
		ow.WriteHeader(http.StatusOK)
		_, _ = ow.Write([]byte(body))
		got := ow.outcome()
		if got.Status != http.StatusOK || got.Started || got.TooLarge || got.HeaderAt.IsZero() {
			t.Errorf("before finish: outcome %+v, want 200, not started", got)
		}
		if after := finishOutcome(t, ow); !after.Started || after.TooLarge || after.Status != http.StatusOK {
			t.Errorf("after finish: outcome %+v, want 200, started", after)
		}
		if !strings.Contains(rec.Body.String(), "http://localhost:8080/hpp/v1/sessions/s1") {
			t.Errorf("body %q not rewritten", rec.Body)
		}
	})

	t.Run("held back, over the limit by Content-Length", func(t *testing.T) {
		rec := httptest.NewRecorder()
		ow := newOriginWriter(rec, o, hpp, nil)
		jsonHeader(ow)
		ow.Header().Set("Content-Length", "999999999")
		ow.WriteHeader(http.StatusOK)
		if got := ow.outcome(); !got.TooLarge || got.Started || got.Status != http.StatusOK {
			t.Errorf("outcome %+v, want too large, not started", got)
		}
		if reason, _ := ow.finish(); reason != ReasonResponseTooLarge {
			t.Errorf("finish reason %q", reason)
		}
		if got := ow.outcome(); !got.TooLarge || got.Started {
			t.Errorf("after finish: outcome %+v, want too large, not started", got)
		}
		if rec.Code != http.StatusOK || rec.Body.Len() != 0 || rec.Flushed {
			t.Errorf("something reached the client: %d %q", rec.Code, rec.Body)
		}
	})

	t.Run("held back, over the limit while written", func(t *testing.T) {
		ow := newOriginWriter(httptest.NewRecorder(), o, hpp, nil)
		jsonHeader(ow)
		ow.WriteHeader(http.StatusOK)
		if _, err := ow.Write(make([]byte, MaxResponseRewrite+1)); err == nil {
			t.Fatal("Write past the limit did not fail")
		}
		if got := ow.outcome(); !got.TooLarge || got.Started {
			t.Errorf("outcome %+v, want too large, not started", got)
		}
	})
}

// finishOutcome runs finish, which must neither refuse nor notice, and
// returns the outcome after it.
func finishOutcome(t *testing.T, ow *originWriter) writeOutcome {
	t.Helper()
	if reason, notice := ow.finish(); reason != "" || notice != "" {
		t.Errorf("finish = %q, %q", reason, notice)
	}
	return ow.outcome()
}

// statusLog is a ResponseRecorder that also logs every WriteHeader call.
type statusLog struct {
	*httptest.ResponseRecorder
	codes []int
}

func (s *statusLog) WriteHeader(code int) {
	s.codes = append(s.codes, code)
	s.ResponseRecorder.WriteHeader(code)
}

// TestOriginWriterHeldBackIgnoresSecondStatus: a held-back response's
// header goes out once, with the rewritten body, from finish; a later
// WriteHeader must not send a header (and the upstream's Content-Length)
// ahead of it.
func TestOriginWriterHeldBackIgnoresSecondStatus(t *testing.T) {
	o := Origins{Upstream: "https://api.kustom.co", Client: "http://localhost:8080"}
	rec := &statusLog{ResponseRecorder: httptest.NewRecorder()}
	ow := newOriginWriter(rec, o, bodyRewriteFor(http.MethodGet, "/hpp/v1/sessions/s1"), nil)
	ow.Header().Set("Content-Type", "application/json")
	ow.WriteHeader(http.StatusOK)
	ow.WriteHeader(http.StatusAccepted)
	ow.WriteHeader(http.StatusContinue)
	if len(rec.codes) != 0 || ow.outcome().Started {
		t.Fatalf("statuses %v reached the client before finish (outcome %+v)", rec.codes, ow.outcome())
	}
	_, _ = ow.Write([]byte(`{"session_url":"https://api.kustom.co/hpp/v1/sessions/s1"}`))
	out := finishOutcome(t, ow)
	if len(rec.codes) != 1 || rec.codes[0] != http.StatusOK || out.Status != http.StatusOK || !out.Started {
		t.Errorf("statuses sent %v, outcome %+v; want one 200, started", rec.codes, out)
	}
	if got := rec.Body.String(); got != `{"session_url":"http://localhost:8080/hpp/v1/sessions/s1"}` {
		t.Errorf("body %q", got)
	}
}
