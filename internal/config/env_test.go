package config

import (
	"os"
	"reflect"
	"testing"
)

func TestExpandEnv(t *testing.T) {
	t.Setenv("LFS_REGION", "ord")
	t.Setenv("LFS_PRIMARY", "ord")
	t.Setenv("LFS_OTHER", "iad")
	t.Setenv("LFS_EMPTY", "")
	t.Setenv("LFS_SPACE", "a b")
	t.Setenv("LFS_UNSET", "") // restored after the test
	os.Unsetenv("LFS_UNSET")
	for _, tc := range []struct{ in, want string }{
		{"$LFS_REGION", "ord"},
		{"${LFS_REGION}", "ord"},
		{"x-$LFS_REGION-y", "x-ord-y"},
		{"x${LFS_REGION}y", "xordy"},
		{"$LFS_REGION$LFS_OTHER", "ordiad"},
		{"$LFS_UNSET", ""},
		{"${LFS_UNSET}", ""},
		{"a $ b", "a $ b"},
		{"no vars", "no vars"},
		{"${LFS_SPACE}", "a b"},
		{"${ LFS_REGION }", "ord"},

		{`${LFS_REGION == "ord"}`, "true"},
		{`${LFS_REGION == "iad"}`, "false"},
		{`${LFS_REGION != "ord"}`, "false"},
		{`${LFS_REGION != "iad"}`, "true"},
		{`${LFS_REGION == 'ord'}`, "true"},
		{`${LFS_REGION != 'ord'}`, "false"},
		{`${LFS_REGION != 'iad'}`, "true"},
		{`${LFS_REGION=="ord"}`, "true"},
		{`${  LFS_REGION   ==   "ord"  }`, "true"},
		{`${LFS_EMPTY == ""}`, "true"},
		{`${LFS_UNSET == ""}`, "true"},
		{`${LFS_UNSET != ''}`, "false"},
		{`${LFS_SPACE == "a b"}`, "true"},
		{`${LFS_REGION == "ORD"}`, "false"},

		{`${LFS_REGION == LFS_PRIMARY}`, "true"},
		{`${LFS_REGION != LFS_PRIMARY}`, "false"},
		{`${LFS_REGION == LFS_OTHER}`, "false"},
		{`${LFS_REGION != LFS_OTHER}`, "true"},
		{`${LFS_REGION==LFS_OTHER}`, "false"},
		{`${LFS_UNSET == LFS_EMPTY}`, "true"},

		{`candidate: ${LFS_REGION == "ord"} # region`, "candidate: true # region"},
		{"url: http://${LFS_REGION}.internal:20202", "url: http://ord.internal:20202"},
	} {
		if got := ExpandEnv(tc.in); got != tc.want {
			t.Errorf("ExpandEnv(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseExpandsEnv(t *testing.T) {
	t.Setenv("LFS_TEST_REGION", "ord")
	t.Setenv("LFS_TEST_PRIMARY_REGION", "ord")
	t.Setenv("LFS_TEST_DIR", "/mnt/app")
	t.Setenv("LFS_TEST_HOST", "node-7")
	in := `
fuse:
  dir: ${LFS_TEST_DIR}
data:
  dir: /srv$LFS_TEST_DIR/data
lease:
  type: static
  hostname: $LFS_TEST_HOST
  advertise-url: "http://${LFS_TEST_HOST}:20202"
  candidate: ${LFS_TEST_REGION == LFS_TEST_PRIMARY_REGION}
  promote: ${LFS_TEST_REGION != "ord"}
exec:
  - cmd: "serve --region $LFS_TEST_REGION"
    if-candidate: ${LFS_TEST_REGION == 'ord'}
`
	c, err := Parse([]byte(in), true)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		got, want any
	}{
		{"fuse.dir", c.FUSE.Dir, "/mnt/app"},
		{"data.dir", c.Data.Dir, "/srv/mnt/app/data"},
		{"lease.hostname", c.Lease.Hostname, "node-7"},
		{"lease.advertise-url", c.Lease.AdvertiseURL, "http://node-7:20202"},
		{"lease.candidate", c.Lease.Candidate, true},
		{"lease.promote", c.Lease.Promote, false},
		{"exec", c.Exec, ExecConfigs{{Cmd: "serve --region ord", IfCandidate: true}}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}

	// A different environment changes the comparisons.
	t.Setenv("LFS_TEST_REGION", "iad")
	c, err = Parse([]byte(in), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.Lease.Candidate || !c.Lease.Promote || c.Exec[0].IfCandidate || c.Exec[0].Cmd != "serve --region iad" {
		t.Errorf("after changing LFS_TEST_REGION: candidate=%v promote=%v exec=%+v", c.Lease.Candidate, c.Lease.Promote, c.Exec)
	}
}

func TestParseWithoutExpansion(t *testing.T) {
	t.Setenv("LFS_TEST_DIR", "/expanded")
	in := static + "fuse:\n  dir: /mnt/$LFS_TEST_DIR\ndata:\n  dir: \"${LFS_TEST_DIR}\"\nexec: \"echo $HOME\"\n"
	c, err := Parse([]byte(in), false)
	if err != nil {
		t.Fatal(err)
	}
	if c.FUSE.Dir != "/mnt/$LFS_TEST_DIR" {
		t.Errorf("fuse.dir = %q, want it unexpanded", c.FUSE.Dir)
	}
	if c.Data.Dir != "${LFS_TEST_DIR}" {
		t.Errorf("data.dir = %q, want it unexpanded", c.Data.Dir)
	}
	if c.Exec[0].Cmd != "echo $HOME" {
		t.Errorf("exec = %q, want it unexpanded", c.Exec[0].Cmd)
	}

	c, err = Parse([]byte(in), true)
	if err != nil {
		t.Fatal(err)
	}
	if c.FUSE.Dir != "/mnt//expanded" || c.Data.Dir != "/expanded" {
		t.Errorf("with expansion: fuse.dir = %q, data.dir = %q", c.FUSE.Dir, c.Data.Dir)
	}
}
