// Package probe holds the test doubles that watch or break a real part from
// the outside: a TCP proxy that black-holes a link without closing it, and
// a KV bucket wrapper that counts the calls reaching the real bucket.
//
// It is a module of its own that imports nothing of this repository, so
// shared's tests can use it as well as the services' (shared cannot import
// devkit, which imports shared).
package probe
