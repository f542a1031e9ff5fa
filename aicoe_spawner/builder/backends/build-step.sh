#!/bin/sh
# The build step of a build pod (backends/kubernetes_job.py): runs user content, holds no
# credentials. The image check (image_check.CHECK_SCRIPT) goes where @CHECK_SCRIPT@ stands.
set -eu
fail() {  # the build's reason, for the record's message (termination message)
  if [ -n "${layout_pid:-}" ]; then kill "$layout_pid" 2>/dev/null || true; fi
  printf '%s\n' "$*" > "${BUILD_TERMINATION_LOG:-/dev/termination-log}" 2>/dev/null || true
  echo "error: $*" >&2; exit 2
}
# buildah's storage: the kernel's overlay where this container may mount it (a layer is then
# unpacked once and a container costs nothing), else vfs (every layer and container a full
# copy of the file system)
driver=vfs
probe="$BUILD_STORAGE/overlay-probe"
# buildah's overlay driver mounts a test overlay when it starts: it fails where it cannot
if buildah --storage-driver overlay --root "$probe/root" --runroot "$probe/run" info \
    >/dev/null 2>&1; then
  driver=overlay
fi
rm -rf "$probe"
B="--storage-driver $driver --root $BUILD_STORAGE/root --runroot $BUILD_STORAGE/run"
# the node's image store (environment images kept by earlier builds' push steps on this node),
# read-only here: its images are used where they lie, never pulled again
node_store=""
if [ -n "${NODE_IMAGES:-}" ] && [ "$driver" = overlay ] && [ -d "$NODE_IMAGES/overlay-images" ]
then
  node_store=$NODE_IMAGES
  B="$B --storage-opt overlay.imagestore=$node_store"
fi
TLS="--tls-verify=${TLS_VERIFY:-true}"
work=$(mktemp -d)
echo "==> buildah storage: $driver"
echo "==> fetching $REPO at $COMMIT"
git init -q "$work/src"
cd "$work/src"
fetch() {  # no redirects, nothing of the pod's environment but PATH
  env -i PATH="$PATH" HOME="$work" GIT_ALLOW_PROTOCOL="$GIT_ALLOW_PROTOCOL" \
    GIT_TERMINAL_PROMPT=0 GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null \
    git -c http.followRedirects=false -c credential.helper= fetch -q --depth 1 -- "$REPO" "$1"
}
fetch "$COMMIT" 2>/dev/null || fetch "$REF"
git -c advice.detachedHead=false checkout -q FETCH_HEAD
got=$(git rev-parse HEAD)
test "$got" = "$COMMIT" || { echo "commit mismatch: got $got"; exit 2; }
src=$(realpath -e -- "$work/src")
inside() {  # $1 resolved (symlinks followed) must exist inside the checkout
  r=$(realpath -e -- "$1" 2>/dev/null) || return 1
  case "$r" in "$src"|"$src"/*) printf '%s' "$r" ;; *) return 1 ;; esac
}
ov="$src/overlays/${OVERLAY:-}"
if [ -n "${OVERLAY:-}" ] && ! [ -e "$ov" ] && ! [ -L "$ov" ]; then
  echo "==> overlay $OVERLAY: no overlays/$OVERLAY folder; the repository is built as it is"
elif [ -n "${OVERLAY:-}" ]; then
  # AICoE-CI's rule: the root Pipfile and Pipfile.lock go, overlays/<name>/* is copied over
  echo "==> overlay $OVERLAY: overlays/$OVERLAY/* copied to the root (root Pipfile* removed)"
  od=$(inside "$src/overlays/$OVERLAY") && test -d "$od" ||
    fail "overlay '$OVERLAY': overlays/$OVERLAY is not a folder inside the repository"
  rm -f -- "$src/Pipfile" "$src/Pipfile.lock"
  for f in "$od"/*; do
    if [ -e "$f" ] || [ -L "$f" ]; then cp -R -- "$f" "$src/"; fi
  done
fi
# Base images: the Dockerfile's FROM lines are read as data (never evaluated) and each image
# is pulled once before the build, without retries, so that an image the cluster cannot pull
# fails the build at once with the registry's answer in the record's message.
base_images() {  # $1: a Dockerfile; prints its FROM images, stages and scratch left out
  set -f; df=$1; stages=" "; args=""; seen_from=""; cont=""
  while IFS= read -r line || [ -n "$line" ]; do
    was=$cont; cont=""
    case "$line" in *'\') cont=1 ;; esac
    [ -z "$was" ] || continue  # a continuation line is not an instruction
    set -- $line
    [ $# -gt 0 ] || continue
    case "$1" in
      [Aa][Rr][Gg])  # an ARG default before the first FROM may name the image
        if [ -z "$seen_from" ] && [ $# -ge 2 ]; then
          case "$2" in *=*) args="$args $2" ;; esac
        fi ;;
      [Ff][Rr][Oo][Mm])
        seen_from=1; shift
        while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
        # FROM image [AS name], nothing else (e.g. not a heredoc's "from x import y")
        [ $# -eq 1 ] || { [ $# -eq 3 ] && case "$2" in [Aa][Ss]) true ;; *) false ;; esac; } ||
          continue
        img=$1
        case "$img" in
          '$'*)  # exactly $NAME or ${NAME}: its ARG default, else left to the build
            name=${img#'$'}; name=${name#'{'}; name=${name%'}'}; img=""
            for kv in $args; do
              if [ "${kv%%=*}" = "$name" ]; then img=${kv#*=}; img=${img#'"'}; img=${img%'"'}; fi
            done ;;
        esac
        case "$img" in
          ''|*'$'*|[Ss][Cc][Rr][Aa][Tt][Cc][Hh]) ;;
          *) case "$stages" in *" $img "*) ;; *) printf '%s\n' "$img" ;; esac ;;
        esac
        if [ $# -ge 3 ]; then case "$2" in [Aa][Ss]) stages="$stages$3 " ;; esac; fi ;;
    esac
  done < "$df"
  set +f
}
pulled=" "
pull_base() {  # $1: an image; pulled once, with no retries, else the build fails naming it
  case "$pulled" in *" $1 "*) return 0 ;; esac
  echo "==> pulling base image $1"
  limit=${PULL_TIMEOUT:-600}
  if ! err=$(timeout "$limit" buildah $B pull -q --retry 0 $TLS -- "$1" 2>&1 >/dev/null); then
    err=$(printf '%s\n' "$err" | grep -v '^[[:space:]]*$' | tail -n 3 | tr '\n' ' ')
    fail "base image $1 cannot be pulled: ${err:-no answer within $limit s}"
  fi
  pulled="$pulled$1 "
}
ctx=$(inside "$src/${CONTEXT_DIR:-.}") && test -d "$ctx" || {
  echo "context_dir '$CONTEXT_DIR' is not a directory inside the repository"; exit 2; }
if [ "$STRATEGY" = source ]; then
  echo "==> source strategy: builder image $BASE_IMAGE"
  pull_base "$BASE_IMAGE"
  fmt='{{index .OCIv1.Config.Labels "io.openshift.s2i.scripts-url"}}'
  url=$(buildah $B inspect --type image --format "$fmt" -- "$BASE_IMAGE" || true)
  scripts=$DEFAULT_SCRIPTS
  case "$url" in
    image:///*) scripts=${url#image://} ;;
  esac
  case "$scripts" in
    *[!A-Za-z0-9._/-]*|*..*|*//*)
      echo "ignoring the builder image's unsafe scripts-url label"; scripts=$DEFAULT_SCRIPTS ;;
  esac
  # substitute @S2I_SCRIPTS@ by parameter expansion (data only)
  rest=$S2I_DOCKERFILE; out=""
  while :; do
    case "$rest" in
      *@S2I_SCRIPTS@*) out="$out${rest%%@S2I_SCRIPTS@*}$scripts"; rest=${rest#*@S2I_SCRIPTS@} ;;
      *) break ;;
    esac
  done
  printf '%s%s' "$out" "$rest" > "$work/Dockerfile.s2i"
  file="$work/Dockerfile.s2i"
elif [ "$STRATEGY" = environment ]; then
  echo "==> environment build on $BASE_IMAGE, decided by: ${DECIDED_BY:-(no environment files)}"
  printf '%s' "$GENERATED_DOCKERFILE" > "$work/Dockerfile.env"
  file="$work/Dockerfile.env"
else
  file=$(inside "$src/$DOCKERFILE") && test -f "$file" || {
    echo "Dockerfile '$DOCKERFILE' is not a file inside the repository"; exit 2; }
fi
bud() {  # $1: a Dockerfile, $2: the image it makes; a failure fails the build saying why
  { r=0; buildah $B bud --isolation chroot $TLS --layers=false --cap-drop=all \
      --cap-add="$STEP_CAPS" -f "$1" -t "$2" "$ctx" || r=$?; echo "$r" > "$work/bud.rc"; } 2>&1 |
    tee "$work/bud.log"
  r=$(cat "$work/bud.rc")
  if [ "$r" != 0 ]; then  # a step of ours says why (aicoe-env); else buildah's last error
    why=$(sed -n 's/^aicoe-build-error: //p' "$work/bud.log" | tail -n 1)
    last=$(grep -i 'error' "$work/bud.log" | tail -n 1)
    [ -n "$why" ] || why="the image build failed (buildah exit code $r): $last"
    fail "$why"
  fi
}
# The environment image (environment builds, when the builder keeps one): the generated
# Dockerfile's part above ENV_MARKER, named by a hash of that text, of the files it copies and
# of the base image's manifest; reused from CACHE_REPO by every commit whose environment is
# the same, else built here and pushed there by the push step.
env_key=""
if [ -n "${CACHE_REPO:-}" ] && [ "$STRATEGY" = environment ]; then
  part=env; : > "$work/env.df"; : > "$work/app.df"
  while IFS= read -r line || [ -n "$line" ]; do
    if [ "$line" = "$ENV_MARKER" ]; then part=app; continue; fi
    printf '%s\n' "$line" >> "$work/$part.df"
  done < "$file"
  if [ "$part" = app ]; then
    {
      cat "$work/env.df"
      set -f
      while IFS= read -r line; do
        set -- $line
        case "$1" in
          COPY) c=$(inside "$ctx/$3") && sha256sum < "$c" || echo "missing $3" ;;
          FROM) case "$2" in
              *@sha256:*) echo "$2" ;;
              *) if command -v skopeo >/dev/null 2>&1 &&
                  m=$(skopeo inspect --raw $TLS -- "docker://$2" 2>/dev/null); then
                  printf '%s' "$m" | sha256sum
                else unpinned=$2; fi ;;
            esac ;;
        esac
      done < "$work/env.df"
      set +f
    } > "$work/env.key"
    env_key=$(sha256sum < "$work/env.key" | cut -c 1-40)
    if [ -n "${unpinned:-}" ]; then
      echo "==> environment image: none (the tag of $unpinned cannot be resolved to a digest)"
      env_key=""
    fi
  fi
fi
if [ -n "$env_key" ]; then
  env_image="$CACHE_REPO:env-$env_key"
  fmt='{{.FromImageID}}'
  on_node() { id=$(buildah $B inspect --type image --format "$fmt" -- "$env_image" 2>/dev/null); }
  if [ -n "$node_store" ] && ! on_node; then
    # another build's keep step may be putting it there now (its mark is younger than 10
    # minutes): wait for that rather than pull it (which costs as much)
    mark="$node_store/aicoe-keeping/env-$env_key"
    if [ -n "$(find "$mark" -mmin -10 2>/dev/null)" ]; then
      echo "==> environment image: waiting for the node's image store to keep it"
      waited=0
      while [ -e "$mark" ] && [ "$waited" -lt "${KEEP_WAIT:-120}" ] && ! on_node; do
        sleep 1; waited=$((waited + 1))
      done
    fi
  fi
  if [ -n "$node_store" ] && on_node && [ -n "$id" ]; then
    echo "==> environment image: reused $env_image from the node's image store"
    env_from=$id  # an image ID: resolved in the stores, never pulled
  elif buildah $B pull -q --retry 0 $TLS -- "$env_image" >/dev/null 2>&1; then
    echo "==> environment image: reused $env_image (the environment files are unchanged)"
    env_from=$env_image
  else
    echo "==> environment image: $env_image is new; building it"
    base_images "$work/env.df" > "$work/base-images"
    while IFS= read -r img; do pull_base "$img"; done < "$work/base-images"
    bud "$work/env.df" aicoe-build/env
    env_from=localhost/aicoe-build/env
    printf '%s\n' "$env_image" > "$work/env-image"
  fi
  { printf 'FROM %s\n' "$env_from"; cat "$work/app.df"; } > "$work/Dockerfile.app"
  echo "==> building $OUTPUT_IMAGE"
  bud "$work/Dockerfile.app" aicoe-build/image
else
  base_images "$file" > "$work/base-images"
  while IFS= read -r img; do pull_base "$img"; done < "$work/base-images"
  echo "==> building $OUTPUT_IMAGE"
  bud "$file" aicoe-build/image
fi
# the OCI layout for the push step is written while the image is checked (a failed check
# stops it: fail)
rm -rf "$WORKSPACE/layout" "$WORKSPACE/env-image"
buildah $B push -q aicoe-build/image "oci:$WORKSPACE/layout:image" > "$work/layout.log" 2>&1 &
layout_pid=$!
@CHECK_SCRIPT@
if ! wait "$layout_pid"; then
  layout_pid=""
  cat "$work/layout.log" >&2
  fail "the built image could not be written for the push step: $(tail -n 1 "$work/layout.log")"
fi
layout_pid=""
if [ -s "$work/env-image" ]; then  # a new environment image: the push step keeps it
  buildah $B push -q aicoe-build/env "oci:$WORKSPACE/layout:env"
  cp "$work/env-image" "$WORKSPACE/env-image"
fi
echo "==> built; the push step uploads it"
