package module

// Exported for the external tests only.
var UpstreamFailureDetail = upstreamFailureDetail
