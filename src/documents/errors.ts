/** Bad input a person can fix: the message is the sentence the API answers with (422). */
export class DocumentRefused extends Error {}
