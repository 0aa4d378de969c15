package module

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// The switch report answers the two questions a merchant bets checkout on:
// does every call reach Kustom and work, and can the shim go without
// breaking an app? It is built from evidence only (rows of Usage and the
// time observing began), never from the absence of complaints: a shim that
// has just started, whose storage was wiped, or whose calls fail, never says
// "complete". This file is plain data and rules; status.go serves it.

// DefaultStatusWindow is how long evidence counts: a week, so that weekly
// jobs (settlement reports, batch captures, a Monday reconciliation) have
// run at least once on their new configuration before the switch counts as
// complete. The Prometheus rules in deploy/prometheus use the same 7 days.
const DefaultStatusWindow = 7 * 24 * time.Hour

// RowState is what one row's calls within the window say.
type RowState string

const (
	// StateNotUsed: no call within the window.
	StateNotUsed RowState = "not_used"
	// StateFailing: the latest call failed (unreachable, timeout, 5xx), or
	// none of the window's calls was answered.
	StateFailing RowState = "failing"
	// StateKeyRejected: the upstream answered 401/403; the key must be
	// regenerated in the Kustom Portal.
	StateKeyRejected RowState = "key_rejected"
	// StateKlarnaHost: the app addresses a Klarna host; it works only
	// through the shim.
	StateKlarnaHost RowState = "klarna_host"
	// StateBridged: the app addresses the shim itself (or a host the shim
	// maps), or sends a Klarna key the shim swaps; it works only through
	// the shim.
	StateBridged RowState = "bridged"
	// StateSwitched: the app addresses the right host with its own key and
	// the upstream accepted it; the shim only passes it on.
	StateSwitched RowState = "switched"
)

// Blocks tells whether a row in this state keeps the switch from being
// complete.
func (s RowState) Blocks() bool {
	switch s {
	case StateFailing, StateKeyRejected, StateKlarnaHost, StateBridged:
		return true
	}
	return false
}

// Failed tells whether the row's calls fail.
func (s RowState) Failed() bool { return s == StateFailing || s == StateKeyRejected }

// Verdict is the report's one-line answer.
type Verdict string

const (
	VerdictComplete       Verdict = "complete"            // green
	VerdictActionRequired Verdict = "action_required"     // amber: an app still depends on the shim
	VerdictFailing        Verdict = "failing"             // red: calls fail
	VerdictNotEnough      Verdict = "not_enough_evidence" // grey: too short, or no call seen
	VerdictUnavailable    Verdict = "unavailable"         // the evidence could not be read
)

// Evidence says how much the report can vouch for.
type Evidence struct {
	// ObservingSince is when this storage (or, from Prometheus, the fleet)
	// began observing calls; zero when unknown.
	ObservingSince time.Time
	// Enough: observed for at least the window.
	Enough bool
	// CallsSeen: at least one call was ever recorded.
	CallsSeen bool
}

// StatusRow is one row of the report: its evidence, its state and what to
// do about it.
type StatusRow struct {
	Usage
	State RowState
	// ActionRequired is what to change, where and for which store; "" when
	// nothing is required.
	ActionRequired string
	// Note explains a row that needs no action but is worth knowing about.
	Note string
}

// NeedsAction tells whether the row keeps the switch from being complete.
func (r StatusRow) NeedsAction() bool { return r.State.Blocks() }

// StoreActions is what one store still has to do. Store is the configured
// credential's name; "" gathers the apps that send their own key.
type StoreActions struct {
	Store string
	Rows  []StatusRow
}

// StoreLabel is how people read a store's name.
func StoreLabel(store string) string {
	if store == "" {
		return "apps sending their own key"
	}
	return "store " + store
}

// StatusReport is the switch status.
type StatusReport struct {
	GeneratedAt time.Time // UTC, whole seconds
	Window      time.Duration
	// Source is where the evidence came from: "storage" (this shim and its
	// peers sharing storage) or "prometheus".
	Source         string
	Evidence       Evidence
	Verdict        Verdict
	SwitchComplete bool
	// ShimInUse: some row was used within the window, whatever its state.
	ShimInUse bool
	// ActionRequired groups the blocking rows by store.
	ActionRequired []StoreActions
	// Services are the rows: Services' order, then unmatched; within one
	// service by hosts, store and key. Every Kustom service has a row.
	Services []StatusRow
	// Error says why the evidence could not be read (VerdictUnavailable).
	Error string
}

// Display names of the services, as the Kustom Portal writes them.
var serviceNames = map[Service]string{
	Checkout:          "Checkout",
	OrderManagement:   "Order management",
	Settlement:        "Settlement",
	HostedPaymentPage: "Hosted payment page",
	CustomerToken:     "Customer token",
	Unmatched:         "Other (not a Kustom API)",
}

// DisplayName is the service's human name ("Order management").
func (s Service) DisplayName() string {
	if n, ok := serviceNames[s]; ok {
		return n
	}
	return string(s)
}

// isKustomService tells whether s is one of the APIs Kustom took over.
func isKustomService(s Service) bool { return serviceRank(s) < len(Services) }

// BuildStatus judges rows of evidence at now. since is when observing began
// (zero: unknown, which is never enough); window defaults to
// DefaultStatusWindow.
func BuildStatus(us []Usage, since, now time.Time, window time.Duration) StatusReport {
	if window <= 0 {
		window = DefaultStatusWindow
	}
	now = now.UTC().Truncate(time.Second)
	latest := make(map[UsageKey]Usage, len(us))
	for _, u := range us {
		latest[u.UsageKey] = mergeUsage(latest[u.UsageKey], u)
	}
	rep := StatusReport{GeneratedAt: now, Window: window, Source: "storage"}
	rep.Evidence = Evidence{ObservingSince: since}
	if !since.IsZero() {
		rep.Evidence.ObservingSince = since.UTC().Truncate(time.Second)
		rep.Evidence.Enough = now.Sub(since) >= window
	}
	seen := map[Service]bool{}
	for _, u := range latest {
		if u.LastUsed.IsZero() {
			continue
		}
		seen[u.Service] = true
		rep.Evidence.CallsSeen = true
		rep.Services = append(rep.Services, judgeRow(u, now, window))
	}
	for _, s := range Services {
		if !seen[s] {
			rep.Services = append(rep.Services, StatusRow{Usage: Usage{UsageKey: UsageKey{Service: s}},
				State: StateNotUsed, Note: "not used"})
		}
	}
	sort.SliceStable(rep.Services, func(i, j int) bool { return lessKey(rep.Services[i].UsageKey, rep.Services[j].UsageKey) })
	rep.decide()
	return rep
}

// decide sets the verdict and the action list from the rows.
func (rep *StatusReport) decide() {
	failing, blocking := false, false
	byStore := map[string]*StoreActions{}
	for _, r := range rep.Services {
		if r.State != StateNotUsed {
			rep.ShimInUse = true
		}
		if !r.State.Blocks() {
			continue
		}
		blocking = true
		failing = failing || r.State.Failed()
		g := byStore[r.Credential]
		if g == nil {
			g = &StoreActions{Store: r.Credential}
			byStore[r.Credential] = g
		}
		g.Rows = append(g.Rows, r)
	}
	rep.ActionRequired = make([]StoreActions, 0, len(byStore))
	for _, g := range byStore {
		rep.ActionRequired = append(rep.ActionRequired, *g)
	}
	sort.Slice(rep.ActionRequired, func(i, j int) bool {
		a, b := rep.ActionRequired[i].Store, rep.ActionRequired[j].Store
		if (a == "") != (b == "") {
			return b == "" // own-key apps last
		}
		return a < b
	})
	switch {
	case failing:
		rep.Verdict = VerdictFailing
	case blocking:
		rep.Verdict = VerdictActionRequired
	case !rep.Evidence.Enough || !rep.Evidence.CallsSeen:
		rep.Verdict = VerdictNotEnough
	default:
		rep.Verdict = VerdictComplete
	}
	rep.SwitchComplete = rep.Verdict == VerdictComplete
}

// recent tells whether t is within window of now. A time after now (another
// instance's clock running ahead) is recent.
func recent(t, now time.Time, window time.Duration) bool {
	return !t.IsZero() && now.Sub(t) <= window
}

// ClockSkewTolerance is how far ahead of this clock another instance's
// evidence may be and still be ordered against ours. A success stamped
// further in the future cannot be ordered against a failure, so it is not
// taken as evidence that calls work.
const ClockSkewTolerance = time.Minute

// AnswerGrace is how long a call may go unanswered before the row counts as
// failing: longer than the upstream's default response-header timeout. A
// row whose latest calls got no answer at all (the apps gave up first) must
// not read as working on the strength of an older success.
const AnswerGrace = DefaultResponseHeaderTimeout + 30*time.Second

// RowStateOf is the state of one row's evidence at now.
func RowStateOf(u Usage, now time.Time, window time.Duration) RowState {
	if !recent(u.LastUsed, now, window) {
		return StateNotUsed
	}
	okIn := recent(u.LastOK, now, window) && !u.LastOK.After(now.Add(ClockSkewTolerance))
	failIn := recent(u.LastFailed, now, window)
	switch {
	case failIn && (!okIn || !u.LastOK.After(u.LastFailed)):
		if u.LastFailure == FailureKeyRejected {
			return StateKeyRejected
		}
		return StateFailing
	case !okIn:
		return StateFailing // used, and not one call answered (by a clock we can order) in the window
	case unanswered(u, now):
		return StateFailing // the latest call went unanswered
	case IsKlarnaHost(u.FromHost) && isKustomService(u.Service):
		return StateKlarnaHost
	case u.FromHost != u.ToHost || u.Key == KeySwapped:
		return StateBridged
	}
	return StateSwitched
}

// judgeRow gives a used row its state and the words for it.
func judgeRow(u Usage, now time.Time, window time.Duration) StatusRow {
	if !u.LastUsed.IsZero() {
		u.LastUsed = u.LastUsed.UTC().Truncate(time.Second)
	}
	r := StatusRow{Usage: u, State: RowStateOf(u, now, window)}
	r.ActionRequired, r.Note = rowWords(r, now, window)
	return r
}

// keyAdvice is what to do about the key the app sends.
func keyAdvice(u Usage) string {
	if u.Key == KeySwapped {
		return fmt.Sprintf(" and give it its own Kustom API key (Kustom Portal → Integrations → Generate new) instead of "+
			"the Klarna key the shim swaps for credential %q", u.Credential)
	}
	return " (its key already works with Kustom)"
}

// rowWords are the row's action (for blocking states) or note.
func rowWords(r StatusRow, now time.Time, window time.Duration) (action, note string) {
	u := r.Usage
	to := u.ToHost
	switch r.State {
	case StateNotUsed:
		return "", "not used in the last " + humanDuration(window)
	case StateFailing:
		return failingAdvice(u, now), ""
	case StateKeyRejected:
		if isKustomHost(to) {
			where := "the app's own configuration, which sends it"
			if u.Key == KeySwapped {
				where = fmt.Sprintf("the shim's credential %q (kustom_api_key), which sends it", u.Credential)
			}
			return fmt.Sprintf("%s answered 401/403 to the key: generate a new key in the Kustom Portal "+
				"(Integrations → Generate new) and put it in %s", to, where), ""
		}
		return fmt.Sprintf("%s answered 401/403 to the app's own key: fix the app's credentials for %s", to, to), ""
	case StateKlarnaHost:
		return fmt.Sprintf("Switch the app calling %s to https://%s (its base URL)%s, then remove the shim",
			u.FromHost, to, keyAdvice(u)), ""
	case StateBridged:
		switch {
		case !isKustomService(u.Service):
			return fmt.Sprintf("Not a Kustom API, and the shim sends these calls from %s to %s: point the app at "+
				"https://%s directly before removing the shim", hostOrShim(u.FromHost), to, to), ""
		case u.FromHost == LocalHost:
			return fmt.Sprintf("Set the app's base URL, now the shim itself, to https://%s%s, then remove the shim",
				to, keyAdvice(u)), ""
		case u.FromHost != to:
			return fmt.Sprintf("The shim maps %s to %s: set the app's base URL to https://%s%s, then remove the shim",
				u.FromHost, to, to, keyAdvice(u)), ""
		}
		return fmt.Sprintf("The app already calls %s but sends the Klarna key the shim swaps for credential %q: "+
			"give it its own Kustom API key (Kustom Portal → Integrations → Generate new), then remove the shim",
			to, u.Credential), ""
	case StateSwitched:
		if !isKustomService(u.Service) {
			return "", fmt.Sprintf("not a Kustom API; the app calls %s with its own key and the shim only passes it on", to)
		}
		return "", fmt.Sprintf("switched: the app calls https://%s with its own key and Kustom accepts it; the shim only "+
			"passes it on (DNS or HTTPS_PROXY sends it here): remove that override, then the shim", to)
	}
	return "", ""
}

func hostOrShim(h string) string {
	if h == LocalHost {
		return "the shim's own address"
	}
	return h
}

// failingAdvice says what failed and what to check.
func failingAdvice(u Usage, now time.Time) string {
	to := u.ToHost
	switch latestFailure(u, now) {
	case FailureUnreachable:
		return fmt.Sprintf("Calls fail: the shim could not reach %s (DNS, connection refused or TLS verification): "+
			"check the shim's egress to %s:443; the error log names the cause per correlation id", to, to)
	case FailureTimeout:
		return fmt.Sprintf("Calls fail: %s did not answer in time: check the network path from the shim and "+
			"Kustom's status page", to)
	case Failure5xx:
		return fmt.Sprintf("Calls fail: %s answered with a server error (5xx): check Kustom's status page and retry; "+
			"kustom_shim_requests_total shows how many", to)
	}
	return fmt.Sprintf("Calls fail: calls were sent to %s but the latest got no answer (the apps gave up first)%s",
		to, clockAdvice(u, now))
}

// clockAdvice explains evidence that cannot be ordered because a shim's
// clock runs ahead.
func clockAdvice(u Usage, now time.Time) string {
	if u.LastOK.After(now.Add(ClockSkewTolerance)) {
		return "; or a shim's clock runs ahead of this one's, so its successes cannot be ordered: fix its time (NTP)"
	}
	return ""
}

// unanswered tells whether the row's latest call started more than
// AnswerGrace ago and no answer came after it: the app gave up first. A
// call still within the grace may simply be in flight.
func unanswered(u Usage, now time.Time) bool {
	return u.LastUsed.After(later(u.LastOK, u.LastFailed)) && now.Sub(u.LastUsed) > AnswerGrace
}

// latestFailure is the reason of the row's latest answer when that answer
// was a failure and no later call went unanswered, else "" (no answer).
func latestFailure(u Usage, now time.Time) Failure {
	if !u.LastFailed.IsZero() && !u.LastOK.After(u.LastFailed) && !unanswered(u, now) {
		return u.LastFailure
	}
	return ""
}

// isKustomHost tells whether h is one of Kustom's API hosts.
func isKustomHost(h string) bool {
	return h == KustomProduction || h == KustomPlayground || strings.HasSuffix(h, ".kustom.co")
}

// Summary is the report's verdict in one line, for the page, the CLI and
// logs.
func (rep StatusReport) Summary() string {
	switch rep.Verdict {
	case VerdictComplete:
		return fmt.Sprintf("Switch complete: for %s every call reached Kustom and worked, and no app depends on the shim's translation.",
			humanDuration(rep.Window))
	case VerdictActionRequired:
		verb := " still depends on the shim."
		if len(rep.ActionRequired) > 1 {
			verb = " still depend on the shim."
		}
		return "Action required: " + storeList(rep.ActionRequired) + verb
	case VerdictFailing:
		for _, r := range rep.Services {
			if r.State.Failed() {
				reason := string(latestFailure(r.Usage, rep.GeneratedAt))
				if reason == "" {
					reason = "no answer"
				}
				return fmt.Sprintf("Calls failing: %s calls from %s to %s fail (%s).", r.Service.DisplayName(),
					StoreLabel(r.Credential), r.ToHost, reason)
			}
		}
		return "Calls failing."
	case VerdictNotEnough:
		if !rep.Evidence.CallsSeen {
			return "Not enough evidence yet: no call has been seen; the switch cannot be judged before apps have called."
		}
		return "Not enough evidence yet: observing for " + rep.ObservedFor() + " of " + humanDuration(rep.Window) + "."
	case VerdictUnavailable:
		return "Cannot tell: " + rep.Error
	}
	return ""
}

// ObservedFor is how long evidence has been gathered, as people say it.
func (rep StatusReport) ObservedFor() string {
	if rep.Evidence.ObservingSince.IsZero() {
		return "no time"
	}
	d := rep.GeneratedAt.Sub(rep.Evidence.ObservingSince)
	if d < 0 {
		d = 0
	}
	return roughDuration(d)
}

func storeList(groups []StoreActions) string {
	names := make([]string, 0, len(groups))
	for _, g := range groups {
		names = append(names, StoreLabel(g.Store))
	}
	if len(names) == 1 {
		return names[0]
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// humanDuration writes a window the way people say it: "7 days", "24 hours"
// only when it is whole days or hours, else Go's form ("90m0s").
func humanDuration(d time.Duration) string {
	switch {
	case d > 0 && d%(24*time.Hour) == 0:
		return plural(int64(d/(24*time.Hour)), "day")
	case d > 0 && d%time.Hour == 0:
		return plural(int64(d/time.Hour), "hour")
	case d > 0 && d%time.Minute == 0:
		return plural(int64(d/time.Minute), "minute")
	case d > 0 && d%time.Second == 0 && d < time.Minute:
		return plural(int64(d/time.Second), "second")
	}
	return d.String()
}

// roughDuration is d in its largest whole unit: "3 hours", "2 days".
func roughDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return plural(int64(d/time.Second), "second")
	case d < time.Hour:
		return plural(int64(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int64(d/time.Hour), "hour")
	}
	return plural(int64(d/(24*time.Hour)), "day")
}

func plural(n int64, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return strconv.FormatInt(n, 10) + " " + unit + "s"
}

// relativeTime is t as seen from now: "just now", "3 minutes ago", "2 days ago".
func relativeTime(t, now time.Time) string {
	d := now.Sub(t)
	if d < time.Minute {
		return "just now"
	}
	return roughDuration(d) + " ago"
}
