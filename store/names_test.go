package store

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	valid := []string{
		"app.db",
		"a",
		"my data.db", // inner spaces are fine
		"données.db",
		"日本語",
		"emoji-😀.db",
		"x-journal.db", // a reserved suffix only counts at the end
		"Ω",
		strings.Repeat("a", 200),
	}
	for _, name := range valid {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}

	invalid := []struct {
		name string
		want string // in the error
	}{
		{"", "empty"},
		{strings.Repeat("a", 201), "longer than 200 bytes"},
		{"a/b.db", "slash or NUL"},
		{"a\x00b.db", "slash or NUL"},
		{".hidden", "starts with a dot"},
		{"x-journal", "reserved for the database's journal file"},
		{"x-wal", "reserved"},
		{"x-pos", "reserved"},

		{"a\nb.db", "control character U+000A"},
		{"a\rb.db", "control character U+000D"},
		{"tab\t.db", "control character U+0009"},
		{"bell\a.db", "control character U+0007"},
		{"esc\x1b[31m.db", "control character U+001B"},
		{"del\x7f.db", "control character U+007F"},
		{"nel\u0085.db", "control character U+0085"},
		{"csi\u009b.db", "control character U+009B"},

		{"evil\u202egpj.db", "bidirectional text control U+202E"},
		{"\u200ex.db", "bidirectional text control U+200E"},
		{"x\u200f.db", "bidirectional text control U+200F"},
		{"x\u202a.db", "U+202A"},
		{"x\u202b.db", "U+202B"},
		{"x\u202c.db", "U+202C"},
		{"x\u202d.db", "U+202D"},
		{"x\u2066.db", "U+2066"},
		{"x\u2067.db", "U+2067"},
		{"x\u2068.db", "U+2068"},
		{"x\u2069.db", "U+2069"},
		{"x\u061c.db", "U+061C"},
		{"a\u2028b.db", "line separator U+2028"},
		{"a\u2029b.db", "line separator U+2029"},

		{"bad\xff.db", "not valid UTF-8"},
		{"\xc3.db", "not valid UTF-8"},
		{"\xc0\xaf.db", "not valid UTF-8"},     // overlong "/"
		{"\xed\xa0\x80.db", "not valid UTF-8"}, // surrogate half

		{" ", "begins with whitespace"},
		{"   ", "begins with whitespace"},
		{" lead.db", "begins with whitespace"},
		{"trail.db ", "ends with whitespace"},
		{"\u00a0nbsp.db", "begins with whitespace"},
		{"ideographic.db\u3000", "ends with whitespace"},
	}
	for _, tt := range invalid {
		err := ValidateName(tt.name)
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, want ErrInvalidName", tt.name, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ValidateName(%q) = %q, want it to say %q", tt.name, err, tt.want)
		}
		// The error quotes the name: it never carries the raw bytes into
		// a log line or a terminal.
		for _, c := range []string{"\n", "\r", "\x1b", "\u202e", "\xff"} {
			if strings.Contains(tt.name, c) && strings.Contains(err.Error(), c) {
				t.Errorf("ValidateName(%q): the error %q holds the raw character %q", tt.name, err, c)
			}
		}
	}
}
