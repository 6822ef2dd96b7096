module karapace

go 1.26.0

require (
	golang.org/x/sys v0.49.0
	lukechampine.com/blake3 v1.4.1
)

require github.com/klauspost/cpuid/v2 v2.0.9 // indirect
