package org.qwenedge.demo.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The app's bundle logic on a desktop, for the Python tests that hold it against real bundles.
 *
 * <pre>
 *   check BUNDLE                       read and verify the bundle as the app does; print what it read
 *   selfcheck BUNDLE TEXT_FILE STATS   judge a runner's output (UTF-8 file) and onStats JSON ("-": none)
 *   prompt BUNDLE MESSAGE              the first chat turn the app would send for MESSAGE
 *   decode TOKENIZER_JSON ID,ID,...    the text of token ids
 * </pre>
 *
 * Prints one JSON object. Exit status: 0 done (and self-check passed), 1 self-check failed, 2 error.
 */
public final class BundleCli {
  private BundleCli() {}

  public static void main(String[] args) {
    try {
      System.exit(run(args));
    } catch (BundleException | IllegalArgumentException | IOException e) {
      Map<String, Object> error = new LinkedHashMap<>();
      error.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
      System.out.println(Json.write(error));
      System.exit(2);
    }
  }

  private static int run(String[] args) throws IOException {
    String command = args.length > 0 ? args[0] : "";
    if (command.equals("check") && args.length == 2) return check(new File(args[1]));
    if (command.equals("selfcheck") && args.length == 4) return selfcheck(new File(args[1]), args[2], args[3]);
    if (command.equals("prompt") && args.length == 3) return prompt(new File(args[1]), args[2]);
    if (command.equals("decode") && args.length == 3) return decode(new File(args[1]), args[2]);
    throw new IllegalArgumentException("usage: check BUNDLE | selfcheck BUNDLE TEXT_FILE STATS_FILE|- "
        + "| prompt BUNDLE MESSAGE | decode TOKENIZER_JSON IDS; got " + Arrays.toString(args));
  }

  private static int check(File bundle) {
    Manifest m = Manifest.load(bundle);
    List<Manifest.FileEntry> files = new ArrayList<>(m.programFiles);
    files.add(m.selfcheck);
    String tokenizer = m.tokenizerFiles.isEmpty() ? null : m.tokenizerJson().path;
    if (tokenizer != null) files = m.filesToVerify();
    BundleFiles.verify(bundle, files, null);
    SelfCheck s = SelfCheck.load(BundleFiles.resolve(bundle, m.selfcheck));
    Map<String, Object> check = new LinkedHashMap<>();
    check.put("prompt_text", s.promptText);
    check.put("prompt_ids", list(s.promptIds));
    check.put("expected_ids", list(s.expectedIds));
    check.put("eos_token_ids", list(s.eosTokenIds));
    check.put("max_new_tokens", (long) s.maxNewTokens);
    check.put("min_matching_prefix", (long) s.minMatchingPrefix);
    check.put("seq_len", (long) s.seqLen());
    List<Object> programFiles = new ArrayList<>();
    for (Manifest.FileEntry e : m.programFiles) programFiles.add(e.path);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("source_name", m.sourceName);
    out.put("quant", m.quant);
    out.put("context_length", (long) m.contextLength);
    out.put("program_files", programFiles);
    out.put("tokenizer", tokenizer);
    out.put("chat_template", m.chatTemplate);
    out.put("eos_token_ids", new ArrayList<Object>(m.eosTokenIds));
    out.put("selfcheck", check);
    System.out.println(Json.write(out));
    return 0;
  }

  private static int selfcheck(File bundle, String textFile, String statsFile) throws IOException {
    Manifest m = Manifest.load(bundle);
    BundleFiles.verify(bundle, m.filesToVerify(), null);
    SelfCheck s = SelfCheck.load(BundleFiles.resolve(bundle, m.selfcheck));
    TokenDecoder decoder = TokenDecoder.load(BundleFiles.resolve(bundle, m.tokenizerJson()), s.idsToDecode());
    String text = new String(Files.readAllBytes(new File(textFile).toPath()), StandardCharsets.UTF_8);
    GenerationStats stats = statsFile.equals("-") ? null
        : GenerationStats.parse(new String(Files.readAllBytes(new File(statsFile).toPath()), StandardCharsets.UTF_8));
    SelfCheck.Result r = s.evaluate(decoder, text, stats);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("passed", r.passed);
    out.put("matching", (long) r.matching);
    out.put("required", (long) r.required);
    out.put("expected", (long) r.expected);
    out.put("expected_text", r.expectedText);
    out.put("summary", r.summary());
    if (stats != null) out.put("stats", stats.summary());
    System.out.println(Json.write(out));
    return r.passed ? 0 : 1;
  }

  private static int prompt(File bundle, String message) {
    Manifest m = Manifest.load(bundle);
    Conversation chat = new Conversation(ChatTemplate.from(m), m.contextLength, null);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("prompt", chat.next(message, 1).prompt);
    System.out.println(Json.write(out));
    return 0;
  }

  private static int decode(File tokenizer, String idList) {
    List<Integer> ids = new ArrayList<>();
    for (String id : idList.split(",")) ids.add(Integer.parseInt(id.trim()));
    int[] array = new int[ids.size()];
    for (int i = 0; i < array.length; i++) array[i] = ids.get(i);
    Map<String, Object> out = new LinkedHashMap<>();
    out.put("text", TokenDecoder.load(tokenizer, ids).decode(array));
    System.out.println(Json.write(out));
    return 0;
  }

  private static List<Object> list(int[] values) {
    List<Object> out = new ArrayList<>();
    for (int v : values) out.add((long) v);
    return out;
  }
}
