package org.qwenedge.demo.core;

import static org.qwenedge.demo.core.Contract.ARTIFACTS;
import static org.qwenedge.demo.core.Contract.CHAT_TEMPLATE;
import static org.qwenedge.demo.core.Contract.EOS_TOKEN_IDS;
import static org.qwenedge.demo.core.Contract.EXPORT;
import static org.qwenedge.demo.core.Contract.FILES;
import static org.qwenedge.demo.core.Contract.FORMAT;
import static org.qwenedge.demo.core.Contract.MANIFEST_FILE;
import static org.qwenedge.demo.core.Contract.MANIFEST_SCHEMA;
import static org.qwenedge.demo.core.Contract.MAX_SEQ_LEN;
import static org.qwenedge.demo.core.Contract.NAME;
import static org.qwenedge.demo.core.Contract.PATH;
import static org.qwenedge.demo.core.Contract.PTE_FORMAT;
import static org.qwenedge.demo.core.Contract.QUANT;
import static org.qwenedge.demo.core.Contract.SCHEMA_VERSION;
import static org.qwenedge.demo.core.Contract.SELFCHECK;
import static org.qwenedge.demo.core.Contract.SHA256;
import static org.qwenedge.demo.core.Contract.SIZE_BYTES;
import static org.qwenedge.demo.core.Contract.SOURCE;
import static org.qwenedge.demo.core.Contract.SPECIAL_TOKENS;
import static org.qwenedge.demo.core.Contract.TOKENIZER;
import static org.qwenedge.demo.core.Contract.TOKENIZER_FILE;

import java.io.File;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * What the app needs from a bundle's {@code manifest.json}, read and checked once: the ExecuTorch
 * artifact's files (program first, then its external weights), the tokenizer, the self-check file,
 * the context length and the chat's special tokens.
 *
 * <p>The schema is the exporter's (runtime/bundle.py); the field names come from {@link Contract}.
 * Checksums are verified by {@link BundleFiles}, not here. Not here either: the other formats (ONNX)
 * and the golden logits, which a phone does not need.
 */
public final class Manifest {
  /** One file the manifest lists: bundle-relative path, sha256 (lowercase hex) and size. */
  public static final class FileEntry {
    public final String path;
    public final String sha256;
    public final long sizeBytes;

    FileEntry(String path, String sha256, long sizeBytes) {
      this.path = path;
      this.sha256 = sha256;
      this.sizeBytes = sizeBytes;
    }

    static FileEntry parse(Node node) {
      String path = node.get(PATH).string();
      String problem = unsafePath(path);
      if (problem != null) {
        throw new BundleException(node.get(PATH).where() + " \"" + path + "\" " + problem
            + "; bundle paths are relative and stay inside the bundle");
      }
      String sha = node.get(SHA256).string();
      if (!sha.matches("[0-9a-f]{64}")) throw node.get(SHA256).problem("is not 64 lowercase hex digits");
      long size = node.get(SIZE_BYTES).longValue();
      if (size < 0) throw node.get(SIZE_BYTES).problem("is negative");
      return new FileEntry(path, sha, size);
    }
  }

  public final String sourceName;
  public final String quant;
  /** The pte artifact's files: the program first, then its data files (model.ptd). */
  public final List<FileEntry> programFiles;
  public final List<FileEntry> tokenizerFiles;
  public final FileEntry selfcheck;
  /** KV-cache capacity, prompt and reply together: the program's get_max_context_len. */
  public final int contextLength;
  /** The Jinja chat template, or null when the bundle has none. */
  public final String chatTemplate;
  public final List<Integer> eosTokenIds;
  /** Special token text to id, e.g. "<|im_end|>" -> 248046. */
  public final Map<String, Integer> specialTokens;

  private Manifest(Node root) {
    long version = root.get(SCHEMA_VERSION).longValue();
    if (version != MANIFEST_SCHEMA) {
      String fix = version > MANIFEST_SCHEMA ? "update the app" : "re-export the bundle";
      throw new BundleException(MANIFEST_FILE + ": schema_version " + version + ", this app reads "
          + MANIFEST_SCHEMA + "; " + fix);
    }
    sourceName = root.get(SOURCE).get(NAME).string();
    contextLength = root.get(EXPORT).get(MAX_SEQ_LEN).intValue();
    if (contextLength < 1) throw root.get(EXPORT).get(MAX_SEQ_LEN).problem("must be positive");
    Node artifact = pteArtifact(root.get(ARTIFACTS));
    quant = artifact.get(QUANT).string();
    programFiles = entries(artifact.get(FILES));
    if (programFiles.isEmpty()) throw artifact.get(FILES).problem("is empty");
    Node tokenizer = root.get(TOKENIZER);
    tokenizerFiles = entries(tokenizer.get(FILES));
    chatTemplate = tokenizer.get(CHAT_TEMPLATE).stringOrNull();
    List<Integer> eos = new ArrayList<>();
    for (int id : tokenizer.get(EOS_TOKEN_IDS).intArray()) eos.add(id);
    eosTokenIds = Collections.unmodifiableList(eos);
    Map<String, Integer> special = new LinkedHashMap<>();
    for (Map.Entry<?, ?> e : tokenizer.get(SPECIAL_TOKENS).object().entrySet()) {
      String text = String.valueOf(e.getKey());
      special.put(text, tokenizer.get(SPECIAL_TOKENS).get(text).intValue());
    }
    specialTokens = Collections.unmodifiableMap(special);
    selfcheck = FileEntry.parse(root.get(SELFCHECK));
  }

  /** Parse and check a manifest already read as JSON. */
  public static Manifest parse(Object json) {
    return new Manifest(Node.root(MANIFEST_FILE, json));
  }

  /** Read and check {@code bundleDir/manifest.json}. */
  public static Manifest load(File bundleDir) {
    File file = new File(bundleDir, MANIFEST_FILE);
    if (!file.isFile()) {
      throw new BundleException(file + " not found: copy a bundle written by `qwen-edge export` there");
    }
    return parse(Json.parseFile(file));
  }

  /** The tokenizer.json entry; a bundle exported without a tokenizer cannot be driven with text. */
  public FileEntry tokenizerJson() {
    for (FileEntry entry : tokenizerFiles) {
      if (entry.path.equals(TOKENIZER_FILE)) return entry;
    }
    throw new BundleException(MANIFEST_FILE + ": the bundle has no " + TOKENIZER_FILE
        + " (a preset with random weights?); export from a checkpoint directory that has one");
  }

  /** The files the app opens, whose checksums it verifies: program, weights, tokenizer, self-check. */
  public List<FileEntry> filesToVerify() {
    List<FileEntry> files = new ArrayList<>(programFiles);
    files.add(tokenizerJson());
    files.add(selfcheck);
    return files;
  }

  /** Why {@code path} could leave the bundle directory, or null when it cannot. */
  static String unsafePath(String path) {
    if (path.isEmpty() || path.indexOf('\\') >= 0 || path.indexOf('\0') >= 0) return "is empty or has a backslash or NUL";
    if (path.startsWith("/") || path.matches("^[A-Za-z]:.*")) return "is absolute";
    for (String part : path.split("/", -1)) {
      if (part.equals("..")) return "contains '..'";
    }
    return null;
  }

  private static Node pteArtifact(Node artifacts) {
    List<String> formats = new ArrayList<>();
    for (Node artifact : artifacts.list()) {
      String format = artifact.get(FORMAT).string();
      if (format.equals(PTE_FORMAT)) return artifact;
      formats.add(format);
    }
    throw new BundleException(MANIFEST_FILE + ": no \"" + PTE_FORMAT + "\" artifact (the bundle has: "
        + (formats.isEmpty() ? "none" : String.join(", ", formats)) + "); export with --format pte");
  }

  private static List<FileEntry> entries(Node list) {
    List<FileEntry> out = new ArrayList<>();
    for (Node entry : list.list()) out.add(FileEntry.parse(entry));
    return Collections.unmodifiableList(out);
  }
}
