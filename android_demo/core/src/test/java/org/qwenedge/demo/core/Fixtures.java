package org.qwenedge.demo.core;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** Small bundles and tokenizers shaped like the exporter's, written into temporary directories. */
final class Fixtures {
  private Fixtures() {}

  static final String TEMPLATE = "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n'"
      + " + message['content'] + '<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
      + "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}";

  /**
   * A byte-level BPE tokenizer.json: 10 "Hello", 11 " world", 12 "\n", 13 "é" (one token),
   * 14 and 15 the two bytes of "é", 16 "中", 20 "<|im_end|>", 21 "<|im_start|>".
   */
  static final String TOKENIZER = "{\"version\": \"1.0\", \"truncation\": null,"
      + " \"added_tokens\": [{\"id\": 20, \"content\": \"<|im_end|>\", \"special\": true},"
      + " {\"id\": 21, \"content\": \"<|im_start|>\", \"single_word\": false, \"special\": true}],"
      + " \"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
      + " \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true},"
      + " \"model\": {\"type\": \"BPE\", \"dropout\": null, \"vocab\": {\"Hello\": 10, \"\u0120world\": 11,"
      + " \"\u010a\": 12, \"\u00c3\u00a9\": 13, \"\u00c3\": 14, \"\u00a9\": 15, \"\u00e4\u00b8\u0143\": 16},"
      + " \"merges\": [[\"H\", \"e\"], [\"\u0120\", \"w\"]]}}";

  static Map<String, Object> selfcheck() {
    Map<String, Object> tolerance = new LinkedHashMap<>();
    tolerance.put("min_matching_prefix", 4L);
    tolerance.put("reason", "test");
    Map<String, Object> s = new LinkedHashMap<>();
    s.put("schema_version", 1L);
    s.put("prompt_text", "Say hello");
    s.put("prompt_ids", longs(1, 2, 3));
    s.put("expected_ids", longs(10, 11, 12, 16, 20));
    s.put("eos_token_ids", longs(20));
    s.put("max_new_tokens", 8L);
    s.put("sampling", "greedy");
    s.put("quant", "8w");
    s.put("tolerance", tolerance);
    return s;
  }

  /** Writes a complete bundle into {@code dir}: program, weights, tokenizer, self-check and manifest. */
  static File bundle(File dir) throws IOException {
    dir.mkdirs();
    write(new File(dir, "model.pte"), "program bytes");
    write(new File(dir, "model.ptd"), "weight bytes");
    write(new File(dir, "tokenizer.json"), TOKENIZER);
    write(new File(dir, "tokenizer_config.json"), "{}");
    write(new File(dir, "selfcheck.json"), Json.write(selfcheck()));
    write(new File(dir, "manifest.json"), Json.write(manifest(dir)));
    return dir;
  }

  /** A manifest for the files in {@code dir}, shaped as exporter/bundle.py writes it. */
  static Map<String, Object> manifest(File dir) {
    Map<String, Object> artifact = new LinkedHashMap<>();
    artifact.put("format", "pte");
    artifact.put("files", Arrays.asList(entry(dir, "model.pte"), entry(dir, "model.ptd")));
    artifact.put("quant", "8w");
    artifact.put("details", new LinkedHashMap<>());
    Map<String, Object> onnx = new LinkedHashMap<>();
    onnx.put("format", "onnx");
    onnx.put("files", Arrays.asList(entry(dir, "model.pte")));
    onnx.put("quant", "fp32");
    Map<String, Object> special = new LinkedHashMap<>();
    special.put("<|im_end|>", 20L);
    special.put("<|im_start|>", 21L);
    Map<String, Object> tokenizer = new LinkedHashMap<>();
    tokenizer.put("files", Arrays.asList(entry(dir, "tokenizer.json"), entry(dir, "tokenizer_config.json")));
    tokenizer.put("chat_template", TEMPLATE);
    tokenizer.put("eos_token_ids", longs(20));
    tokenizer.put("special_tokens", special);
    Map<String, Object> export = new LinkedHashMap<>();
    export.put("max_seq_len", 256L);
    export.put("prefill_chunk", 32L);
    Map<String, Object> source = new LinkedHashMap<>();
    source.put("kind", "checkpoint");
    source.put("name", "tiny-code");
    Map<String, Object> m = new LinkedHashMap<>();
    m.put("schema_version", 1L);
    m.put("model", new LinkedHashMap<>());
    m.put("source", source);
    m.put("export", export);
    m.put("tokenizer", tokenizer);
    m.put("artifacts", Arrays.asList(onnx, artifact));
    m.put("selfcheck", entry(dir, "selfcheck.json"));
    return m;
  }

  static Map<String, Object> entry(File dir, String path) {
    File file = new File(dir, path);
    Map<String, Object> e = new LinkedHashMap<>();
    e.put("path", path);
    e.put("sha256", BundleFiles.sha256(file));
    e.put("size_bytes", file.length());
    return e;
  }

  static List<Object> longs(long... values) {
    List<Object> out = new ArrayList<>();
    for (long v : values) out.add(v);
    return out;
  }

  static void write(File file, String text) throws IOException {
    try (OutputStream out = new FileOutputStream(file)) {
      out.write(text.getBytes(StandardCharsets.UTF_8));
    }
  }

  private static final List<File> TEMP_DIRS = new ArrayList<>();

  static {
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      for (File dir : TEMP_DIRS) delete(dir);
    }));
  }

  /** A fresh empty directory under the system temporary directory, removed when the tests end. */
  static synchronized File tempDir(String name) throws IOException {
    File dir = File.createTempFile("qwen-edge-demo-" + name, "");
    if (!dir.delete() || !dir.mkdir()) throw new IOException("cannot make " + dir);
    TEMP_DIRS.add(dir);
    return dir;
  }

  private static void delete(File file) {
    File[] children = file.isDirectory() && !java.nio.file.Files.isSymbolicLink(file.toPath()) ? file.listFiles() : null;
    if (children != null) {
      for (File child : children) delete(child);
    }
    file.delete();
  }

  /** A deep copy of parsed JSON, to change one field of it. */
  @SuppressWarnings("unchecked")
  static Map<String, Object> copy(Map<String, Object> json) {
    return (Map<String, Object>) Json.parse(Json.write(json));
  }
}
