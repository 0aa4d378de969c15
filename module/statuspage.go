package module

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"html/template"
	"io"
	"strings"
	"time"
)

//go:embed status.html
var statusHTML string

var statusTemplate = template.Must(template.New("status").Parse(statusHTML))

// statusCSP allows nothing but the page's own inline style (by its hash),
// which also shows that the page needs no network beyond itself.
var statusCSP = func() string {
	_, rest, ok1 := strings.Cut(statusHTML, "<style>")
	css, _, ok2 := strings.Cut(rest, "</style>")
	if !ok1 || !ok2 {
		panic("status.html: no <style> element")
	}
	sum := sha256.Sum256([]byte(css))
	return "default-src 'none'; style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) +
		"'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}()

// displayTime is how the page writes a time for people; <time datetime>
// holds the RFC 3339 form.
const displayTime = "2006-01-02 15:04:05 UTC"

// verdictLooks is each verdict's colour class, heading and icon.
var verdictLooks = map[Verdict]struct{ class, title, icon string }{
	VerdictComplete:       {"ok", "Switch complete", "✓"},
	VerdictActionRequired: {"warn", "Action required", "!"},
	VerdictFailing:        {"fail", "Calls failing", "×"},
	VerdictNotEnough:      {"unknown", "Not enough evidence yet", "?"},
	VerdictUnavailable:    {"unknown", "Cannot tell", "?"},
}

// stateTexts are the states as the page names them.
var stateTexts = map[RowState]string{
	StateNotUsed:     "Not used",
	StateFailing:     "Failing",
	StateKeyRejected: "Key rejected",
	StateKlarnaHost:  "Klarna host",
	StateBridged:     "Needs the shim",
	StateSwitched:    "Switched",
}

type statusView struct {
	Verdict, Class, Title, Icon, Summary string
	Complete, ShimInUse, Unavailable     bool
	NotEnough                            bool
	GeneratedAt, GeneratedAtText         string
	WindowText, ObservedText             string
	ObservingSince, ObservingSinceText   string
	FromPrometheus                       bool
	Stores                               []storeView
	Rows                                 []statusRowView
}

type storeView struct {
	Label string
	Rows  []statusRowView
}

type statusRowView struct {
	Name, FromHost, ToHost, Store, Key string
	Local                              bool
	State, StateText                   string
	Blocks, Failed                     bool
	LastUsed, LastUsedText, Ago        string
	LastOKText, LastFailedText         string
	Failure                            string
	Clients                            []string
	Action, Note                       string
}

func viewTime(t time.Time) (rfc, text string) {
	if t.IsZero() {
		return "", ""
	}
	return t.UTC().Format(time.RFC3339), t.UTC().Format(displayTime)
}

func rowView(r StatusRow, now time.Time) statusRowView {
	rv := statusRowView{Name: r.Service.DisplayName(), FromHost: r.FromHost, ToHost: r.ToHost,
		Store: r.Credential, Key: r.Key, Local: r.FromHost == LocalHost,
		State: string(r.State), StateText: stateTexts[r.State], Blocks: r.State.Blocks(), Failed: r.State.Failed(),
		Failure: string(r.LastFailure), Action: r.ActionRequired, Note: r.Note}
	if !r.LastUsed.IsZero() {
		rv.LastUsed, rv.LastUsedText = viewTime(r.LastUsed)
		rv.Ago = relativeTime(r.LastUsed, now)
	} else {
		rv.Note = "" // the Last used column already says "Not used"
	}
	_, rv.LastOKText = viewTime(r.LastOK)
	_, rv.LastFailedText = viewTime(r.LastFailed)
	for _, c := range r.Clients {
		rv.Clients = append(rv.Clients, c.UserAgent)
	}
	return rv
}

// renderStatusHTML writes the page for rep; relative times are from
// rep.GeneratedAt.
func renderStatusHTML(w io.Writer, rep StatusReport) error {
	look := verdictLooks[rep.Verdict]
	v := statusView{
		Verdict: string(rep.Verdict), Class: look.class, Title: look.title, Icon: look.icon,
		Summary: rep.Summary(), Complete: rep.SwitchComplete, ShimInUse: rep.ShimInUse,
		Unavailable: rep.Verdict == VerdictUnavailable, NotEnough: rep.Verdict == VerdictNotEnough,
		WindowText: humanDuration(rep.Window), FromPrometheus: rep.Source == "prometheus",
	}
	v.GeneratedAt, v.GeneratedAtText = viewTime(rep.GeneratedAt)
	v.ObservingSince, v.ObservingSinceText = viewTime(rep.Evidence.ObservingSince)
	v.ObservedText = "observing for " + rep.ObservedFor() + " of " + v.WindowText
	for _, g := range rep.ActionRequired {
		sv := storeView{Label: StoreLabel(g.Store)}
		for _, r := range g.Rows {
			sv.Rows = append(sv.Rows, rowView(r, rep.GeneratedAt))
		}
		v.Stores = append(v.Stores, sv)
	}
	for _, r := range rep.Services {
		v.Rows = append(v.Rows, rowView(r, rep.GeneratedAt))
	}
	return statusTemplate.Execute(w, v)
}
