"""A local web demo: upload a photo, choose a pose, get the person in that pose and a sequence GIF.

  make app                      # = .venv-app/bin/python -m reposedm_jax.app --workdir runs/demo --data runs/demo/data
  python -m reposedm_jax.app --workdir RUN [--weights DIR] [--data DATA] [--port 7860]

Gradio lives in its own venv (`.venv-app`, requirements-app.txt: it pins Pillow below the core stack's). The
model is loaded once; each request runs predict's own code (reposedm_jax/predict) on the chosen inputs, so the
app and the command line give the same images. Sources and poses: an uploaded photo (its keypoints by BlazePose,
`make pose-venv`), an uploaded pose file (OpenPose JSON, PIDM .txt / .npy, PATN CSV), or one of the dataset's
test images and poses from `--data` (which works without BlazePose).
"""

import argparse
import glob
import os
import shutil
import tempfile

from reposedm_jax.data import names
from reposedm_jax.predict import __main__ as predict_cli
from reposedm_jax.predict import engine, inputs


def dataset_examples(data: str, limit: int = 40) -> dict:
  """{label: (image path, pose .txt path)} of a PIDM-layout dataset's test images (test.lst), at most `limit`."""
  out = {}
  listed = os.path.join(data, 'test.lst') if data else ''
  if not listed or not os.path.isfile(listed):
    return out
  wanted = {os.path.splitext(n)[0] for n in open(listed).read().split()}
  for path in sorted(glob.glob(os.path.join(data, 'img', '**', '*.*'), recursive=True)):
    rel = os.path.relpath(path, data)
    pose = os.path.join(data, os.path.splitext(rel.replace('img', 'pose', 1))[0] + '.txt')
    if os.path.splitext(names.fashion_name(rel))[0] in wanted and os.path.isfile(pose):
      out[os.path.relpath(path, os.path.join(data, 'img'))] = (path, pose)
      if len(out) >= limit:
        break
  return out


KEEP_REQUESTS = 20


def _prune(out_root: str) -> None:
  """Keeps the newest KEEP_REQUESTS request folders (a long-running demo must not fill the disk)."""
  dirs = sorted((os.path.join(out_root, d) for d in os.listdir(out_root)), key=os.path.getmtime)
  for d in dirs[:-KEEP_REQUESTS]:
    shutil.rmtree(d, ignore_errors=True)


def transfer(model, photo_poses, examples, *, source_photo, source_example, pose_photo, pose_file, pose_example,
             steps, seed, frames, out_root):
  """One request: (result PNG, side-by-side PNG, GIF or None, a status line)."""
  _prune(out_root)
  argv = ['--workdir', 'unused', '--out', tempfile.mkdtemp(dir=out_root), '--seed', str(int(seed))]
  if steps:  # the model is loaded once: the sampling steps are set on its config (one sampler per value)
    with model.config.unlocked():
      model.config.sample.num_steps = int(steps)
  if source_photo:
    argv += ['--source', source_photo]
  elif source_example:
    # A dataset image is already in the model's frame: resized as the loaders do (a photo pose still gets the
    # person crop).
    argv += ['--source', examples[source_example][0], '--source-pose', examples[source_example][1],
             '--crop', 'resize', '--pose-crop', 'person']
  else:
    return None, None, None, 'Choose a source photo or an example.'
  target = pose_photo or pose_file or (examples[pose_example][1] if pose_example else '')
  if not target:
    return None, None, None, 'Choose a target pose: a photo, a pose file or an example.'
  if int(frames) > 1:  # a sequence from the source's own pose to the target
    if source_photo or not source_example:
      return None, None, None, 'A sequence starts at the source\'s pose: choose the source from the examples.'
    argv += ['--pose', examples[source_example][1], '--pose', target, '--interpolate', str(int(frames))]
  else:
    argv += ['--pose', target]
  args = predict_cli.build_parser().parse_args(argv)
  try:
    record = predict_cli._run(args, model, photo_poses)  # pylint: disable=protected-access
  except Exception as e:  # noqa: BLE001 -- shown to the user in the page, one line
    return None, None, None, f'{type(e).__name__}: {e}'
  sub = 'frames' if record.get('gif') else ''
  last = len(record['targets']) - 1
  result = os.path.join(args.out, sub, f'result_{last:03d}.png')
  side = os.path.join(args.out, sub, f'side_{last:03d}.png')
  return result, side, record.get('gif'), f"{record['model']}; {record['sampler']}; seed {record['seed']}"


def build_app(model, photo_poses, examples, out_root):
  import gradio as gr
  labels = sorted(examples)
  with gr.Blocks(title='RePoseDM-JAX') as demo:
    gr.Markdown(f'## RePoseDM-JAX: a person in a new pose\n{model.description} ({model.config.variant}), '
                f'{model.hw[0]}x{model.hw[1]}')
    with gr.Row():
      with gr.Column():
        source_photo = gr.Image(type='filepath', label='source photo (keypoints by BlazePose)')
        source_example = gr.Dropdown(labels, label='... or a dataset image', value=labels[0] if labels else None)
      with gr.Column():
        pose_photo = gr.Image(type='filepath', label='target pose from a photo')
        pose_file = gr.File(type='filepath', label='... or a pose file (OpenPose JSON, .txt, .npy, .csv)')
        pose_example = gr.Dropdown(labels, label="... or a dataset image's pose",
                                   value=labels[1] if len(labels) > 1 else None)
      with gr.Column():
        steps = gr.Slider(1, 200, value=model.config.sample.num_steps, step=1, label='sampling steps')
        seed = gr.Number(value=0, precision=0, label='seed')
        frames = gr.Slider(1, 24, value=1, step=1, label='frames (> 1: a GIF from the source pose to the target)')
        run = gr.Button('Generate', variant='primary', elem_id='generate')
    with gr.Row():
      result = gr.Image(label='result', type='filepath', elem_id='result', height=320)
      side = gr.Image(label='source | target pose | result', type='filepath', height=320)
      gif = gr.Image(label='sequence', type='filepath', height=320)
    status = gr.Textbox(label='status', elem_id='status')

    def on_click(sp, se, pp, pf, pe, st, sd, fr):
      return transfer(model, photo_poses, examples, source_photo=sp, source_example=se, pose_photo=pp, pose_file=pf,
                      pose_example=pe, steps=st, seed=sd, frames=fr, out_root=out_root)

    run.click(on_click, [source_photo, source_example, pose_photo, pose_file, pose_example, steps, seed, frames],
              [result, side, gif, status], api_name='transfer')
  return demo


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m reposedm_jax.app', description=__doc__.split('\n\n')[0])
  w = p.add_mutually_exclusive_group(required=True)
  w.add_argument('--workdir')
  w.add_argument('--weights')
  p.add_argument('--data', default='', help='a PIDM-layout dataset whose test images are offered as examples')
  p.add_argument('--port', type=int, default=7860)
  p.add_argument('--host', default='127.0.0.1')
  p.add_argument('--pose-python', default='')
  args = p.parse_args(argv)
  model = engine.load(args.workdir or args.weights)
  photo_poses = inputs.PhotoPoses(args.pose_python)
  out_root = tempfile.mkdtemp(prefix='reposedm_app_')
  app = build_app(model, photo_poses, dataset_examples(args.data), out_root)
  print(f'RePoseDM-JAX app on http://{args.host}:{args.port} ({model.description})', flush=True)
  try:
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=[out_root])
  finally:
    photo_poses.close()
    shutil.rmtree(out_root, ignore_errors=True)


if __name__ == '__main__':
  main()
