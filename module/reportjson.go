package module

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// The JSON form of the report, which the status page (?format=json), the
// admin API (GET /kustom/status), `kustom-shim kustom-status` and
// scripts share. Keys are always present; times are RFC 3339 or null.
//
//	{
//	  "verdict": "action_required",   // complete | action_required | failing |
//	                                  // not_enough_evidence | unavailable
//	  "summary": "Action required: store shop1 still depends on the shim.",
//	  "switch_complete": false,       // true only with enough evidence, a call seen
//	                                  // and no failing or shim-dependent row
//	  "shim_in_use": true,            // some row was used within window
//	  "window": "168h0m0s",
//	  "generated_at": "2026-03-01T12:00:00Z",
//	  "source": "storage",            // or "prometheus"
//	  "error": "",                    // why the evidence could not be read
//	  "evidence": {"observing_since": "2026-02-20T08:00:00Z", "enough": true, "calls_seen": true},
//	  "action_required": [            // grouped by store; "" = apps sending their own key
//	    {"store": "shop1", "rows": [ <row>, … ]}
//	  ],
//	  "services": [ <row>, … ]        // every Kustom service at least once
//	}
//
// A row:
//
//	{
//	  "service": "checkout",          // checkout, order_management, settlement,
//	                                  // hosted_payment_page, customer_token, unmatched
//	  "service_name": "Checkout",
//	  "from_host": "local",           // host the app addressed; "local" = the shim itself
//	  "to_host": "api.kustom.co",
//	  "credential": "shop1",          // configured credential; "" = the app's own key
//	  "key": "swapped",               // swapped | kept ("" on a never-used row)
//	  "state": "bridged",             // not_used | failing | key_rejected |
//	                                  // klarna_host | bridged | switched
//	  "last_used": "…", "last_ok": "…", "last_failed": null,
//	  "last_failure": "",             // upstream_unreachable | upstream_timeout |
//	                                  // upstream_5xx | kustom_rejected_key
//	  "clients": ["kco_rest_php/4.0.0"], // up to 5 recent User-Agents, newest first
//	  "action_required": "Set the app's base URL …", // "" when none
//	  "note": ""
//	}
type statusReportJSON struct {
	Verdict        Verdict            `json:"verdict"`
	Summary        string             `json:"summary"`
	SwitchComplete bool               `json:"switch_complete"`
	ShimInUse      bool               `json:"shim_in_use"`
	Window         string             `json:"window"`
	GeneratedAt    time.Time          `json:"generated_at"`
	Source         string             `json:"source"`
	Error          string             `json:"error"`
	Evidence       evidenceJSON       `json:"evidence"`
	ActionRequired []storeActionsJSON `json:"action_required"`
	Services       []statusRowJSON    `json:"services"`
}

type evidenceJSON struct {
	ObservingSince *time.Time `json:"observing_since"`
	Enough         bool       `json:"enough"`
	CallsSeen      bool       `json:"calls_seen"`
}

type storeActionsJSON struct {
	Store string          `json:"store"`
	Rows  []statusRowJSON `json:"rows"`
}

type statusRowJSON struct {
	Service        Service    `json:"service"`
	ServiceName    string     `json:"service_name"`
	FromHost       string     `json:"from_host"`
	ToHost         string     `json:"to_host"`
	Credential     string     `json:"credential"`
	Key            string     `json:"key"`
	State          RowState   `json:"state"`
	LastUsed       *time.Time `json:"last_used"`
	LastOK         *time.Time `json:"last_ok"`
	LastFailed     *time.Time `json:"last_failed"`
	LastFailure    Failure    `json:"last_failure"`
	Clients        []string   `json:"clients"`
	ActionRequired string     `json:"action_required"`
	Note           string     `json:"note"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func timeOf(p *time.Time) time.Time {
	if p == nil {
		return time.Time{}
	}
	return *p
}

// MarshalJSON writes the report in the documented shape above.
func (r StatusReport) MarshalJSON() ([]byte, error) {
	out := statusReportJSON{
		Verdict:        r.Verdict,
		Summary:        r.Summary(),
		SwitchComplete: r.SwitchComplete,
		ShimInUse:      r.ShimInUse,
		Window:         r.Window.String(),
		GeneratedAt:    r.GeneratedAt.UTC(),
		Source:         r.Source,
		Error:          r.Error,
		Evidence: evidenceJSON{ObservingSince: timePtr(r.Evidence.ObservingSince), Enough: r.Evidence.Enough,
			CallsSeen: r.Evidence.CallsSeen},
		ActionRequired: make([]storeActionsJSON, 0, len(r.ActionRequired)),
		Services:       make([]statusRowJSON, 0, len(r.Services)),
	}
	for _, g := range r.ActionRequired {
		gj := storeActionsJSON{Store: g.Store, Rows: make([]statusRowJSON, 0, len(g.Rows))}
		for _, row := range g.Rows {
			gj.Rows = append(gj.Rows, row.toJSON())
		}
		out.ActionRequired = append(out.ActionRequired, gj)
	}
	for _, row := range r.Services {
		out.Services = append(out.Services, row.toJSON())
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads the documented shape (for the CLI and tests).
func (r *StatusReport) UnmarshalJSON(b []byte) error {
	var in statusReportJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	w, err := time.ParseDuration(in.Window)
	if err != nil {
		return fmt.Errorf("window: %v", err)
	}
	*r = StatusReport{GeneratedAt: in.GeneratedAt, Window: w, Source: in.Source, Error: in.Error,
		Verdict: in.Verdict, SwitchComplete: in.SwitchComplete, ShimInUse: in.ShimInUse,
		Evidence: Evidence{ObservingSince: timeOf(in.Evidence.ObservingSince), Enough: in.Evidence.Enough,
			CallsSeen: in.Evidence.CallsSeen}}
	for _, g := range in.ActionRequired {
		sa := StoreActions{Store: g.Store}
		for _, row := range g.Rows {
			sa.Rows = append(sa.Rows, row.fromJSON())
		}
		r.ActionRequired = append(r.ActionRequired, sa)
	}
	for _, row := range in.Services {
		r.Services = append(r.Services, row.fromJSON())
	}
	return nil
}

// MarshalJSON writes one row as in the report.
func (r StatusRow) MarshalJSON() ([]byte, error) { return json.Marshal(r.toJSON()) }

func (r StatusRow) toJSON() statusRowJSON {
	j := statusRowJSON{Service: r.Service, ServiceName: r.Service.DisplayName(), FromHost: r.FromHost,
		ToHost: r.ToHost, Credential: r.Credential, Key: r.Key, State: r.State,
		LastUsed: timePtr(r.LastUsed), LastOK: timePtr(r.LastOK), LastFailed: timePtr(r.LastFailed),
		LastFailure: r.LastFailure, Clients: make([]string, 0, len(r.Clients)),
		ActionRequired: r.ActionRequired, Note: r.Note}
	for _, c := range r.Clients {
		j.Clients = append(j.Clients, c.UserAgent)
	}
	return j
}

func (j statusRowJSON) fromJSON() StatusRow {
	r := StatusRow{Usage: Usage{UsageKey: UsageKey{Service: j.Service, FromHost: j.FromHost, ToHost: j.ToHost,
		Credential: j.Credential, Key: j.Key}, LastUsed: timeOf(j.LastUsed), LastOK: timeOf(j.LastOK),
		LastFailed: timeOf(j.LastFailed), LastFailure: j.LastFailure},
		State: j.State, ActionRequired: j.ActionRequired, Note: j.Note}
	for _, c := range j.Clients {
		r.Clients = append(r.Clients, Client{UserAgent: c})
	}
	return r
}

// writeStatusJSON sends the report as indented JSON with status code.
func writeStatusJSON(w http.ResponseWriter, code int, rep StatusReport) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, err = w.Write(append(b, '\n'))
	return err
}
