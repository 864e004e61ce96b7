package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{name: "empty", in: "", want: nil},
		{name: "only blanks", in: " \t\n  ", want: nil},
		{name: "one word", in: "app", want: []string{"app"}},
		{name: "words", in: "app serve --addr :8081", want: []string{"app", "serve", "--addr", ":8081"}},
		{name: "repeated and edge spaces", in: "  a   b  ", want: []string{"a", "b"}},
		{name: "tab separates", in: "a\tb\t\tc", want: []string{"a", "b", "c"}},
		{name: "newline separates", in: "a\nb\n", want: []string{"a", "b"}},
		{name: "mixed separators", in: "a \t\n b", want: []string{"a", "b"}},
		{name: "carriage return is not a separator", in: "a\rb", want: []string{"a\rb"}},
		{name: "utf-8", in: "écho «ünïcode» 日本", want: []string{"écho", "«ünïcode»", "日本"}},

		// Single quotes: everything literal.
		{name: "single quoted spaces", in: "sh -c 'echo a  b'", want: []string{"sh", "-c", "echo a  b"}},
		{name: "single quoted backslash", in: `'a\b' 'c\'`, want: []string{`a\b`, `c\`}},
		{name: "single quoted double quote", in: `'say "hi"'`, want: []string{`say "hi"`}},
		{name: "single quoted dollar", in: `'$HOME'`, want: []string{"$HOME"}},
		{name: "single quoted tab and newline", in: "'a\tb\nc'", want: []string{"a\tb\nc"}},

		// Double quotes.
		{name: "double quoted spaces", in: `"a b" c`, want: []string{"a b", "c"}},
		{name: "escaped double quote", in: `"say \"hi\""`, want: []string{`say "hi"`}},
		{name: "escaped backslash", in: `"a\\b"`, want: []string{`a\b`}},
		{name: "escaped backslash before quote", in: `"a\\" b`, want: []string{`a\`, "b"}},
		{name: "single quote inside double", in: `"it's"`, want: []string{"it's"}},
		{name: "double quoted tab", in: "\"a\tb\"", want: []string{"a\tb"}},
		{
			name: "backslash before an ordinary char inside double quotes",
			in:   `sh -c "printf 'a\n'"`,
			want: []string{"sh", "-c", `printf 'a\n'`},
		},

		// Concatenation of quoted and unquoted parts in one word.
		{name: "adjacent quotes concatenate", in: `a'b'"c"d`, want: []string{"abcd"}},
		{name: "quoted suffix", in: `--name="x y"`, want: []string{"--name=x y"}},
		{name: "quoted prefix", in: `'x y'z`, want: []string{"x yz"}},

		// Empty quoted strings.
		{name: "empty single quotes", in: "''", want: []string{""}},
		{name: "empty double quotes", in: `""`, want: []string{""}},
		{name: "empty argument in the middle", in: `a "" b`, want: []string{"a", "", "b"}},
		{name: "two empty arguments", in: `'' ""`, want: []string{"", ""}},
		{name: "empty quotes glued to a word", in: `a''b ""c`, want: []string{"ab", "c"}},

		// Backslash outside quotes.
		{name: "escaped space", in: `a\ b c`, want: []string{"a b", "c"}},
		{name: "escaped quote", in: `\"a\'`, want: []string{`"a'`}},
		{name: "escaped backslash unquoted", in: `a\\b`, want: []string{`a\b`}},
		{name: "escaped ordinary char", in: `\a\b`, want: []string{"ab"}},
		{name: "escaped tab", in: "a\\\tb", want: []string{"a\tb"}},
		{name: "lone escaped space is an argument", in: `a \  b`, want: []string{"a", " ", "b"}},
		{
			name: "backslash-newline continues the line",
			in:   "app --flag \\\n  --other",
			want: []string{"app", "--flag", "--other"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := splitCommand(tc.in)
			if err != nil {
				t.Fatalf("splitCommand(%q) error: %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("splitCommand(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestSplitCommandErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"unterminated single quote", "echo 'abc", "unterminated quote"},
		{"unterminated double quote", `echo "abc`, "unterminated quote"},
		{"lone single quote", "'", "unterminated quote"},
		{"lone double quote", `"`, "unterminated quote"},
		{"escaped closing double quote", `"abc\"`, "unterminated quote"},
		{"double quote inside single quotes does not close", `'a"`, "unterminated quote"},
		{"trailing backslash", `echo abc\`, "trailing backslash"},
		{"lone backslash", `\`, "trailing backslash"},
		{"trailing backslash after space", `a \`, "trailing backslash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := splitCommand(tc.in)
			if err == nil {
				t.Fatalf("splitCommand(%q) = %q, want error %q", tc.in, got, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("splitCommand(%q) error = %q, want %q", tc.in, err, tc.want)
			}
			if got != nil {
				t.Fatalf("splitCommand(%q) returned args %q with an error", tc.in, got)
			}
		})
	}
}
