import importlib.util
import os

import pytest

from memjax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_default_and_paper_configs_validate():
  s = config_lib.validate(load_config("capacity"))
  assert s.vocab_size == 128 and s.layers == (1,)
  paper = config_lib.validate(load_config("capacity_paper"))
  assert paper.layers == (1, 2, 4, 8) and paper.d_model == (32, 64, 128, 256)
  assert paper.precisions == ("bf16-mixed", "fp32") and len(paper.seeds) == 5
  shapes = config_lib.model_shapes(paper)
  assert len(shapes) == 32
  # A log grid through each model's capacity: 3.6 bits/param / 704 bits a sequence.
  small = config_lib.dataset_sizes_for(paper, shapes[0])
  assert min(small) < 3.6 * 80_352 / 704 < max(small)


@pytest.mark.parametrize("name", ["capacity", "capacity_paper", "capacity_gpu_check", "text",
                                  "text_paper", "membership", "dynamics", "distributional",
                                  "pretrained_distributional"])
def test_every_config_file_exposes_the_optimizer_fields(name):
  # An override of a field missing from the file fails as unknown: dynamics and distributional
  # lacked these, so their optimizer could not be changed from the command line.
  settable = set(load_config(name).train.keys())
  assert {"weight_decay", "b1", "b2", "eps", "grad_clip", "vocab_chunk"} <= settable


@pytest.mark.parametrize("field,value,needle", [
    ("data.vocab_size", 1, "config.data.vocab_size: must be an integer in [2,"),
    ("data.seq_len", 0, "config.data.seq_len: must be an integer in [2,"),
    ("sweep.layers", (0,), "config.sweep.layers: must be integers in [1,"),
    ("sweep.d_model", (-32,), "config.sweep.d_model: must be integers in [1,"),
    ("sweep.d_model", (31,), "config.sweep.d_model: each d_model must be divisible by model.num_heads"),
    ("sweep.dataset_sizes", (0, 5), "config.sweep.dataset_sizes: must be integers in [1,"),
    ("sweep.dataset_sizes", (), "config.sweep.dataset_sizes: must list at least one value"),
    ("sweep.seeds", (-1,), "config.sweep.seeds: must be integers in [0,"),
    ("sweep.precisions", ("fp16",), "config.sweep.precisions: must be a list of fp32, bf16, bf16-mixed"),
    ("sweep.precisions", ("bf16,fp16",),
     "config.sweep.precisions: must be a list of fp32, bf16, bf16-mixed, got ('bf16', 'fp16')"),
    ("train.steps", 0, "config.train.steps: must be an integer in [1,"),
    ("train.batch_size", -4, "config.train.batch_size: must be an integer in [1,"),
    ("train.learning_rate", 0.0, "config.train.learning_rate: must be a finite number > 0"),
    ("train.b2", 1.5, "config.train.b2: must be a finite number >= 0"),
    ("eval.test_size", 0, "config.eval.test_size: must be an integer in [1,"),
    ("sweep.seeds", (0, 1, 0), "config.sweep.seeds: lists 0 more than once, got (0, 1, 0)"),
    ("sweep.learning_rates", (1e-3, 1e-3), "config.sweep.learning_rates: lists 0.001 more than"),
    ("sweep.d_model", (16, 16), "config.sweep.d_model: lists 16 more than once"),
    ("sweep.precisions", ("bf16", "bf16"), "config.sweep.precisions: lists 'bf16' more than"),
])
def test_bad_values_name_the_field(field, value, needle):
  config = load_config("capacity")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
  assert str(e.value).startswith(needle), str(e.value)
  assert "\n" not in str(e.value)


def test_capacity_save_params_is_a_bool_and_off_by_default():
  config = load_config("capacity")
  assert config_lib.validate(config).save_params is False
  del config.sweep["save_params"]  # an older config without the field
  assert config_lib.validate(config).save_params is False
  config.sweep.save_params = "yes"
  with pytest.raises(config_lib.ConfigError, match="^config.sweep.save_params: must be True or "
                     "False, got 'yes'$"):
    config_lib.validate(config)


def test_dataset_size_that_would_repeat_sequences_is_refused():
  # 2**10 = 1024 sequences: 20 draws repeat about 1% of themselves, 21 more.
  config = load_config("capacity")
  config.data.vocab_size = 2
  config.data.seq_len = 10
  config.sweep.dataset_sizes = (20,)
  config_lib.validate(config)
  config.sweep.dataset_sizes = (8, 21)
  with pytest.raises(config_lib.ConfigError, match=r"config.sweep.dataset_sizes: dataset size 21 "
                     r"is too large: at most 20 \(sequences are drawn with replacement from "
                     r"V\*\*S = 2\*\*10, and more than 1% of them would repeat"):
    config_lib.validate(config)


def test_unknown_field_in_a_config_file_is_refused():
  config = load_config("capacity")
  with config.unlocked():
    config.train.stepz = 10
  with pytest.raises(config_lib.ConfigError, match="config.train.stepz: unknown field; allowed: "):
    config_lib.validate(config)


def test_unwritable_workdir_is_refused(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(config_lib.ConfigError, match="--workdir: cannot write to"):
    config_lib.check_workdir(str(blocker / "sub"))
  config_lib.check_workdir(str(tmp_path / "fine"))
  assert (tmp_path / "fine").is_dir()


def test_a_warmup_as_long_as_training_is_warned_about(caplog):
  config = load_config("capacity")
  caplog.set_level("WARNING")
  config_lib.validate(config)
  assert "warmup" not in caplog.text
  config.train.steps = config.train.warmup_steps
  config_lib.validate(config)
  assert f"train.warmup_steps ({config.train.warmup_steps}) >= train.steps" in caplog.text


def test_data_errors_name_the_field_and_keep_the_message_whole():
  # A KeyError's str() is quoted; the quotes go. Other messages keep theirs, also at the end.
  e = config_lib.data_error(KeyError("no column 'text' in x.parquet"), reads_files=True)
  assert str(e) == "config.data.paths: no column 'text' in x.parquet"
  e = config_lib.data_error(ValueError("'/d/b.jsonl:2' is not valid UTF-8 in 'x'"), True)
  assert str(e) == "config.data.paths: '/d/b.jsonl:2' is not valid UTF-8 in 'x'"
  assert str(config_lib.data_error(ValueError("no text"), False)) == "config.data.source: no text"
  # The field's words count only outside paths and quotes: these were blamed on data.tfds_name
  # and data.vocab_size.
  e = config_lib.data_error(ValueError("/data/tfds_export/a.jsonl:2 is not valid JSON (x)"), True)
  assert str(e).startswith("config.data.paths: /data/tfds_export/")
  e = config_lib.data_error(ValueError(
      "/d/a.jsonl:1 has no field 'text' (it has ['content', 'vocab_size']); set text_field."), True)
  assert str(e).startswith("config.data.text_field: ")
  e = config_lib.data_error(ValueError("split by document, the corpus's 9 sequences"), True,
                            extra_fields=(("split by document", "data.pool_split"),))
  assert str(e).startswith("config.data.pool_split: ")


def test_an_unwritable_cache_dir_is_blamed_on_data_cache_dir(tmp_path):
  # Was "config.data.source: [Errno 20] Not a directory: ..." (data.paths for a file source).
  from memjax.experiments import dynamics as dynamics_experiment
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  config = load_config("dynamics")
  config.data.max_documents = 5
  config.data.tokenizer = "bytes"
  config.data.cache_dir = str(blocker / "cache")
  settings = dynamics_experiment.validate(config)
  with pytest.raises(config_lib.ConfigError) as e:
    dynamics_experiment.load_tokens(settings.data, str(tmp_path / "work"))
  assert str(e.value).startswith("config.data.cache_dir: cannot write the cache in ")
  # An OSError reading a source file names the source, even with the cache above the corpus.
  e = config_lib.data_error(PermissionError(13, "Permission denied", str(tmp_path / "a.txt")),
                            True)
  assert str(e).startswith("config.data.paths: ")
