#!/bin/sh
# Regenerates the OpenPGP test material in this directory with GnuPG.
# TEST-ONLY keys: made here for the tests, their secret halves are thrown
# away. Times are faked so the files do not depend on the day they are made:
# every key is created on 2024-01-01.
set -eu
cd "$(dirname "$0")"
GNUPGHOME=$(mktemp -d)
export GNUPGHOME
trap 'gpgconf --kill gpg-agent; rm -rf "$GNUPGHOME"' EXIT
T0=20240101T000000
g() { at=$1; shift; gpg --batch --quiet --pinentry-mode loopback --passphrase '' --faked-system-time "$at!" "$@"; }
fpr() { gpg --with-colons --list-keys "$1" | awk -F: '/^fpr/ {print $10; exit}'; }
subfpr() { gpg --with-colons --list-keys "$1" | awk -F: '/^fpr/ {n++; if (n == 2) {print $10; exit}}'; }

# RSA primary key that signs.
g $T0 --quick-gen-key 'Test RSA <rsa@test.invalid>' rsa2048 sign,cert never
RSA=$(fpr rsa@test.invalid)
gpg --export "$RSA" > rsa.pub.gpg
g 20240102T000000 -u "$RSA!" --digest-algo SHA256 -o rsa.sig --detach-sign msg.txt
g 20240102T000000 -u "$RSA!" --digest-algo SHA512 -o rsa.clear.asc --clearsign msg.txt
g 20240102T000000 -u "$RSA!" --digest-algo SHA384 --textmode -a -o rsa.text.asc --detach-sign msg.txt
g 20240102T000000 -u "$RSA!" --digest-algo SHA1 -o rsa.sha1.sig --detach-sign msg.txt
g 20240102T000000 -u "$RSA!" --digest-algo SHA256 --sig-notation '!critical@test.invalid=1' -o rsa.critical.sig --detach-sign msg.txt

# Ed25519 primary key (certify only) with an Ed25519 signing subkey and an
# encryption subkey.
g $T0 --quick-gen-key 'Test Ed25519 <ed@test.invalid>' ed25519 cert never
ED=$(fpr ed@test.invalid)
g $T0 --quick-add-key "$ED" ed25519 sign never
g $T0 --quick-add-key "$ED" cv25519 encr never
EDSUB=$(subfpr ed@test.invalid)
gpg --export -a "$ED" > ed.pub.asc
g 20240102T000000 -u "$EDSUB!" --digest-algo SHA256 -o ed.clear.asc --clearsign msg.txt
g 20240102T000000 -u "$EDSUB!" --digest-algo SHA512 -a -o ed.sig.asc --detach-sign msg.txt

# Ed25519 key that expires a day after its creation.
g $T0 --quick-gen-key 'Test Expired <expired@test.invalid>' ed25519 sign,cert 1d
EXP=$(fpr expired@test.invalid)
gpg --export "$EXP" > expired.pub.gpg
g 20240101T010000 -u "$EXP!" -o expired.sig --detach-sign msg.txt

# Ed25519 key revoked (no reason given: as if compromised) after signing.
g $T0 --quick-gen-key 'Test Revoked <revoked@test.invalid>' ed25519 sign,cert never
REV=$(fpr revoked@test.invalid)
g 20240101T010000 -u "$REV!" -o revoked.sig --detach-sign msg.txt
sed 's/^:-----BEGIN/-----BEGIN/' "$GNUPGHOME/openpgp-revocs.d/$REV.rev" | g 20240101T020000 --import
gpg --export "$REV" > revoked.pub.gpg
