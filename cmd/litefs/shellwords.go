package main

import (
	"errors"
	"strings"
)

// splitCommand splits a command line into arguments the way a POSIX shell
// would for simple commands: whitespace separates words; single quotes keep
// everything literal; inside double quotes a backslash escapes only $, `,
// ", \ and newline and is otherwise kept; outside quotes a backslash
// escapes the next character; backslash-newline continues the line. No
// expansion is done: $VAR was already expanded when the config file was read.
func splitCommand(s string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inWord  bool
		quote   rune
		escaped bool
	)
	for _, r := range s {
		switch {
		case escaped:
			escaped = false
			switch {
			case r == '\n':
				// Line continuation: both characters disappear.
			case quote == '"' && !strings.ContainsRune("$`\"\\", r):
				cur.WriteRune('\\')
				cur.WriteRune(r)
			default:
				cur.WriteRune(r)
				inWord = true
			}
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case quote == '"':
			switch r {
			case '"':
				quote = 0
			case '\\':
				escaped = true
			default:
				cur.WriteRune(r)
			}
		case r == '\\':
			escaped = true
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				args = append(args, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote")
	}
	if escaped {
		return nil, errors.New("trailing backslash")
	}
	if inWord {
		args = append(args, cur.String())
	}
	return args, nil
}
