package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Applications listed under [gui] apps get launchers on the host: .desktop
// files that run the app through 'karapace exec'. They are named after the
// environment's short_id, so destroy finds and removes them.

func applicationsDir(getenv func(string) string) string {
	if d := getenv("XDG_DATA_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "applications")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "share", "applications")
	}
	return ""
}

func launcherPath(getenv func(string) string, shortID, app string) string {
	return filepath.Join(applicationsDir(getenv), "karapace-"+shortID+"-"+app+".desktop")
}

// desktopQuote quotes an Exec argument as the Desktop Entry spec says.
func desktopQuote(s string) string {
	if !strings.ContainsAny(s, " \t\n\"'\\><~|&;$*?#()`%") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\\\`, `"`, `\"`, "`", "\\`", "$", `\$`, "%", "%%")
	return `"` + r.Replace(s) + `"`
}

// writeLaunchers writes one launcher per app for a built environment in
// the store at storeRoot, which the launcher names: it works whatever
// store the desktop's own environment would choose.
func writeLaunchers(getenv func(string) string, storeRoot string, res *buildResult, apps []string) error {
	dir := applicationsDir(getenv)
	if dir == "" {
		return fmt.Errorf("cannot tell where launchers go: set XDG_DATA_HOME or HOME")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	for _, app := range apps {
		body := fmt.Sprintf(`[Desktop Entry]
Type=Application
Version=1.0
%s
Comment=%s in the karapace environment %s
Exec=%s --store %s exec %s -- %s
Icon=utilities-terminal
Terminal=false
Categories=Development;
X-Karapace-Env-Id=%s
`, launcherName(app, res.ShortID, res.Name), app, res.EnvID, desktopQuote(self), desktopQuote(storeRoot), res.EnvID, desktopQuote(app), res.EnvID)
		if err := writeFileAtomic(launcherPath(getenv, res.ShortID, app), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// launcherName is the Name line: the app, and the environment by name.
func launcherName(app, shortID, name string) string {
	if name == "" {
		name = shortID
	}
	return fmt.Sprintf("Name=%s (karapace %s)", app, name)
}

// relabelLaunchers gives an environment's launchers its new name.
func relabelLaunchers(getenv func(string) string, shortID, name string, out *output) {
	dir := applicationsDir(getenv)
	if dir == "" {
		return
	}
	prefix := "karapace-" + shortID + "-"
	matches, _ := filepath.Glob(filepath.Join(dir, prefix+"*.desktop"))
	for _, p := range matches {
		app := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), prefix), ".desktop")
		data, err := os.ReadFile(p)
		if err != nil {
			out.warnf("renaming launcher %s: %v", p, err)
			continue
		}
		lines := strings.Split(string(data), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "Name=") {
				lines[i] = launcherName(app, shortID, name)
			}
		}
		if err := writeFileAtomic(p, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
			out.warnf("renaming launcher %s: %v", p, err)
		}
	}
}

// removeLaunchers removes the launchers of a destroyed environment.
func removeLaunchers(getenv func(string) string, shortID string, out *output) {
	dir := applicationsDir(getenv)
	if dir == "" {
		return
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "karapace-"+shortID+"-*.desktop"))
	for _, p := range matches {
		if err := os.Remove(p); err != nil {
			out.warnf("removing launcher %s: %v", p, err)
		}
	}
}
