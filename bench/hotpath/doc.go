// Package hotpath holds the benchmark of kustom-shim's own work per request
// (BenchmarkHotPath), run by bench/run.sh. It only reads the module's
// exported API; it has no code of its own.
package hotpath
