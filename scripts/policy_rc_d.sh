# Sourced by scripts/setup.sh, and by test/unit/setup_script.test.ts with a scratch path.
#
# A Debian package's maintainer scripts start (and restart) its service through invoke-rc.d
# or deb-systemd-invoke, and both ask /usr/sbin/policy-rc.d first: exit status 101 means
# "action forbidden by policy" (/usr/share/doc/init-system-helpers/README.policy-rc.d.gz;
# Docker's Debian images ship a permanent one). setup.sh holds such a policy only while
# apt-get installs, so installing haproxy never starts a proxy on a gateway, and no service
# the user already runs is restarted by an upgraded dependency. The tests and the demo start
# their own peers inside the lab's namespaces. Nothing is ever stopped, disabled or
# reconfigured: a service the user had keeps running as it was.

# Only the tests point this elsewhere (a scratch directory).
POLICY_RC_D="${SETUP_POLICY_RC_D_PATH:-/usr/sbin/policy-rc.d}"
# Written into the file we create, so that removal can check the file is still ours.
POLICY_RC_D_MARK="# transparent-relay scripts/setup.sh: temporary, removed when setup.sh exits"
# The path of the policy-rc.d this shell created, or empty.
policy_rc_d_ours=""

# Forbids service starts until service_starts_restore. Returns 1, changing nothing, when a
# policy-rc.d already exists: it belongs to the administrator (or the image) and keeps
# deciding. Callers install `trap service_starts_restore EXIT` first.
service_starts_forbid() {
  if [[ -e $POLICY_RC_D || -L $POLICY_RC_D ]]; then return 1; fi
  # Recorded before the write: a signal in between still removes it (the mark decides).
  policy_rc_d_ours="$POLICY_RC_D"
  # noclobber: never overwrite a policy-rc.d that appeared since the check above.
  local text
  text=$(printf '#!/bin/sh\n%s\nexit 101\n' "$POLICY_RC_D_MARK")
  if ! (set -o noclobber && printf '%s\n' "$text" >"$POLICY_RC_D") 2>/dev/null; then
    policy_rc_d_ours=""
    return 1
  fi
  chmod 0755 "$POLICY_RC_D"
}

# Removes the policy-rc.d this shell created, and only if it still carries our mark. Safe to
# call more than once (explicitly after the install, then again from the EXIT trap).
service_starts_restore() {
  local path="$policy_rc_d_ours"
  if [[ -n $path ]] && grep -qxF "$POLICY_RC_D_MARK" "$path" 2>/dev/null; then rm -f "$path"; fi
  policy_rc_d_ours=""
}
