package main

import "fmt"

func validEnvName(name string) error {
	if len(name) == 0 || len(name) > 64 {
		return fmt.Errorf("invalid environment name %q: it must be 1 to 64 characters long", name)
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("invalid environment name %q: only letters, digits, '_' and '-' are allowed", name)
		}
	}
	return nil
}
